"""The training loop, on accelerate: ``setup()``, then ``fit()``, then ``finish()``.

One loop for one process or many (``accelerate launch`` / ``torchrun``): accelerate owns
devices, precision and gradient synchronisation. The loop reads top to bottom: take an
accumulation window, forward and backward each micro-batch, clip, step, schedule, emit.
Consumers learn about progress only through events.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmc_cli.checkpoints.manager import CheckpointManager, Policy
from llmc_cli.checkpoints.state import TrainerState, restore_rng
from llmc_cli.data.dataset import Rows, build_rows, rows_fingerprint
from llmc_cli.data.packing import Collator
from llmc_cli.data.templates import ensure_chat_template
from llmc_cli.engine.events import EvalEnded, EventBus, RunStarted, StepEnded, TrainingWarning
from llmc_cli.engine.interrupt import StopRequest
from llmc_cli.engine.loss import TokenLoss, model_inputs, target_count
from llmc_cli.engine.plan import RunPlan
from llmc_cli.engine.snapshot import Resume, restore_snapshot, write_snapshot
from llmc_cli.errors import DataError, RunInterrupted, TrainingError
from llmc_cli.models.loading import BILLION, add_lora, load_base_model, load_tokenizer, parameter_count
from llmc_cli.optimize.allocator import keep_freed_memory
from llmc_cli.optimize.attention import NAME as ATTENTION_NAME
from llmc_cli.optimize.attention import matches_stock_attention, use_packed_attention
from llmc_cli.optimize.dropout import use_fast_lora_dropout
from llmc_cli.optimize.hardware import Hardware, choose_precision, detect

ACCELERATE_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}


@dataclass
class FitResult:
    """What the loop measured."""

    steps: int
    epochs: float
    train_time_s: float  # optimizer steps only
    eval_time_s: float  # evaluations, including the one at step 0 and the final one
    tokens: int
    initial_eval_loss: float | None
    final_eval_loss: float | None
    best_eval_loss: float | None
    final_train_loss: float | None
    checkpoint_time_s: float  # saving checkpoints, this session


class Trainer:
    """Fine-tunes one model on one dataset as planned; emits events on ``bus``."""

    def __init__(self, plan: RunPlan, run_dir: Path, bus: EventBus, stop: StopRequest) -> None:
        self.plan = plan
        self.config = plan.resolved.config
        self.run_dir = run_dir
        self.bus = bus
        self.stop = stop
        self.eval_losses: list[float] = []
        self.eval_time_s = 0.0
        self.checkpoint_time_s = 0.0
        self.state = TrainerState()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Choose precision, load tokenizer, data, model and adapter, and prepare with accelerate."""
        from accelerate import Accelerator, DataLoaderConfiguration
        from accelerate.utils import set_seed
        from torch.utils.data import DataLoader
        from transformers import get_scheduler

        cfg = self.config
        self.hardware: Hardware = detect()
        self.precision, self.precision_reason = choose_precision(
            cfg.model.precision, cfg.model.enable_mixed_precision, self.hardware
        )
        self.accelerator = Accelerator(
            cpu=self.hardware.device == "cpu",
            mixed_precision=ACCELERATE_PRECISION[self.precision],
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
        set_seed(cfg.training.seed)
        self.kept_freed_memory = self.hardware.device == "cpu" and keep_freed_memory()

        self.tokenizer = load_tokenizer(self.plan.source)
        self.template_origin = ensure_chat_template(self.tokenizer, self.plan.source.family)
        self.rows = self._build_rows()
        self.data_fingerprint = rows_fingerprint(self.rows.train)

        model = load_base_model(self.plan.source, self.precision, cfg.model.quantize)
        base = model
        stock_attention = use_packed_attention(model) if cfg.data.packing else None
        self.total_params = parameter_count(model)
        self.gradient_checkpointing = (
            self.total_params >= BILLION
            if cfg.model.enable_gradient_checkpointing == "auto"
            else cfg.model.enable_gradient_checkpointing
        )
        model = add_lora(model, cfg.lora, self.gradient_checkpointing, cfg.model.quantize != "none")
        on_cpu = self.hardware.device == "cpu"
        self.fast_dropout = on_cpu and use_fast_lora_dropout(model) > 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.trainable_params = sum(p.numel() for p in self.params)
        optimizer = torch.optim.AdamW(self.params, lr=cfg.training.lr, weight_decay=cfg.training.weight_decay)

        collate = Collator(self.tokenizer.pad_token_id, packed=cfg.data.packing)
        generator = torch.Generator().manual_seed(cfg.training.seed)
        train_loader = DataLoader(
            self.rows.train, batch_size=cfg.training.batch_size, shuffle=True, collate_fn=collate, generator=generator
        )
        eval_loader = DataLoader(self.rows.val, batch_size=cfg.training.batch_size, collate_fn=collate)
        self.model, self.optimizer, self.train_loader, self.eval_loader = self.accelerator.prepare(
            model, optimizer, train_loader, eval_loader
        )
        self.loss = TokenLoss(self.model)
        sample = {
            k: v.to(self.accelerator.device) if torch.is_tensor(v) else v
            for k, v in collate(self.rows.train[:1]).items()
        }
        with self.accelerator.autocast():
            if not self.loss.verify(self.model, sample, rtol=1e-4 if self.precision == "fp32" else 2e-2):
                self.bus.emit(TrainingWarning("loss", f"Using full-vocabulary logits: {self.loss.reason}."))
            self.attention = stock_attention or getattr(base.config, "_attn_implementation", "unknown")
            inputs = model_inputs(sample)
            atol = 1e-3 if self.precision == "fp32" else 5e-2
            if stock_attention and matches_stock_attention(self.model, base, inputs, stock_attention, atol):
                self.attention = ATTENTION_NAME
            elif stock_attention:
                self.bus.emit(
                    TrainingWarning("attention", f"Packed attention differs on this model; using {stock_attention}.")
                )
        self.steps_per_epoch = max(1, math.ceil(len(self.train_loader) / cfg.training.grad_accum))
        self.total_steps = cfg.training.max_steps or max(1, math.ceil(cfg.training.epochs * self.steps_per_epoch))
        self.eval_every = cfg.training.eval_every or default_eval_interval(
            self.total_steps, self.rows.train_report.tokens / self.steps_per_epoch, self.rows.val_report.tokens
        )
        # Not prepared: accelerate would step it once per process; this one steps once per update.
        self.scheduler = get_scheduler(
            "constant_with_warmup" if cfg.training.scheduler == "constant" else cfg.training.scheduler,
            self.optimizer,
            num_warmup_steps=round(cfg.training.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        run = cfg.run
        self.checkpoints = CheckpointManager(
            self.run_dir,
            Policy(
                interval_steps=run.checkpoint_interval,
                interval_minutes=run.checkpoint_minutes,
                keep_last=run.max_checkpoints,
                keep_best=run.keep_best_checkpoints,
                metric=run.checkpoint_metric,
                on_error=run.on_checkpoint_error,
            ),
            self.bus,
        )

    def _build_rows(self) -> Rows:
        cfg = self.config
        rows = build_rows(self.tokenizer, self.plan.data, cfg.data, cfg.training.seed)
        for note in self.plan.notes + rows.train_report.warnings(cfg.data.max_length):
            self.bus.emit(TrainingWarning("data", note))
        if not rows.train:
            raise DataError(
                f"No training example is left after tokenisation ({rows.train_report.examples} read).",
                hint="Raise --max-length, use --overlong truncate, or check that responses are not empty.",
            )
        return rows

    def started_event(self) -> RunStarted:
        return RunStarted(
            run_dir=str(self.run_dir),
            model=self.plan.source.location,
            family=self.plan.source.family.name,
            precision=self.precision,
            device=self.hardware.device_name,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            train_examples=self.rows.train_report.kept,
            val_examples=self.rows.val_report.kept,
            train_rows=len(self.rows.train),
            trainable_params=self.trainable_params,
            total_params=self.total_params,
        )

    # -------------------------------------------------------------------- fit
    def fit(self, resume: Resume | None = None) -> FitResult:
        """Train to the planned number of optimizer steps, from the start or from ``resume``.

        Evaluates at step 0 (fresh runs), on schedule and at the end; checkpoints on the
        interval, at each epoch end and when a stop is requested.
        """
        cfg = self.config.training
        self.state = state = resume.state if resume else TrainerState()
        pos = state.position
        self.eval_losses = [loss for _, loss in state.eval_history]
        if resume is None:
            state.initial_eval_loss = self._evaluate_and_record(0)
        pending_rng = resume.rng if resume else None
        interval = _Interval()
        self.model.train()
        while pos.step < self.total_steps and not self.stop.requested:
            self.train_loader.set_epoch(pos.epoch)
            tick = time.perf_counter()  # training time: steps, data and logging; not eval or saving
            loader = self.train_loader
            if pos.batches_in_epoch:
                loader = self.accelerator.skip_first_batches(self.train_loader, pos.batches_in_epoch)
            # RNG goes back to the saved state at the moment the uninterrupted run saved it:
            # before a new epoch's iterator is made, or after the resumed one's.
            if pending_rng is not None and pos.batches_in_epoch == 0:
                restore_rng(pending_rng)
                pending_rng = None
            batches = iter(loader)
            if pending_rng is not None:
                restore_rng(pending_rng)
                pending_rng = None
            for window in _windows(batches, cfg.grad_accum):
                loss_sum, targets, grad_norm = self.train_step(window)
                pos.step += 1
                pos.batches_in_epoch += len(window)
                interval.add(window, loss_sum, targets)
                if pos.step % cfg.log_every == 0 or pos.step == self.total_steps:
                    state.last_train_loss = self._log(pos.step, interval, grad_norm)
                    pos.tokens += interval.tokens
                    interval = _Interval()
                pos.train_time_s += time.perf_counter() - tick
                if pos.step % self.eval_every == 0 and pos.step < self.total_steps:
                    self._evaluate_and_record(pos.step)
                if self.checkpoints.due(pos.step):
                    self._checkpoint("interval")
                tick = interval.started = time.perf_counter()
                if pos.step >= self.total_steps or self.stop.requested:
                    break
            else:
                pos.epoch += 1
                pos.batches_in_epoch = 0
                self._checkpoint("epoch")
        pos.tokens += interval.tokens
        if self.stop.requested:
            self.bus.emit(TrainingWarning("interrupted", f"{self.stop.reason}: stopped after step {pos.step}"))
            saved = self._checkpoint("interrupt")
            where = f"checkpoint {saved}" if saved else "no checkpoint (saving failed; see the warning)"
            raise RunInterrupted(
                f"Training stopped by {self.stop.reason} after step {pos.step} of {self.total_steps}; "
                f"state saved as {where}.",
                hint=f"Continue exactly where it stopped with: llmc resume {self.run_dir}",
            )
        final = self.eval_losses[-1] if state.eval_history and state.eval_history[-1][0] == pos.step else None
        if final is None:
            final = self._evaluate_and_record(pos.step)
        return FitResult(
            steps=pos.step,
            epochs=pos.step / self.steps_per_epoch,
            train_time_s=pos.train_time_s,
            eval_time_s=self.eval_time_s,
            tokens=pos.tokens,
            initial_eval_loss=state.initial_eval_loss,
            final_eval_loss=final,
            best_eval_loss=min(self.eval_losses) if self.eval_losses else None,
            final_train_loss=state.last_train_loss,
            checkpoint_time_s=self.checkpoint_time_s,
        )

    def _evaluate_and_record(self, step: int) -> float | None:
        loss = self.evaluate(step)
        if loss is not None:
            self.state.eval_history.append((step, loss))
        return loss

    def _checkpoint(self, reason: str) -> Path | None:
        """Save a checkpoint of the current state (main process writes; all wait)."""
        pos = self.state.position
        saved_state = self.state
        if pos.batches_in_epoch >= len(self.train_loader):  # an epoch's last step: next is a new epoch
            saved_state = TrainerState.from_json(self.state.to_json())
            saved_state.position.epoch += 1
            saved_state.position.batches_in_epoch = 0
        started = time.perf_counter()
        self.accelerator.wait_for_everyone()
        path = None
        if self.accelerator.is_main_process:

            def write(directory: Path) -> dict[str, Any]:
                return write_snapshot(
                    directory,
                    model=self.accelerator.unwrap_model(self.model),
                    optimizer=self.optimizer,
                    scheduler=self.scheduler,
                    state=saved_state,
                    config_json=self.plan.resolved.to_json(),
                    facts={
                        "epoch_fraction": saved_state.position.batches_in_epoch / max(1, len(self.train_loader)),
                        "data_fingerprint": self.data_fingerprint,
                        "model": self.plan.source.location,
                        "workdir": os.getcwd(),
                    },
                )

            path = self.checkpoints.save(pos.step, write, reason)
        self.accelerator.wait_for_everyone()
        self.checkpoint_time_s += time.perf_counter() - started
        return path

    def restore(self, checkpoint: Path) -> Resume:
        """Load a checkpoint of this run into the prepared model, optimizer and scheduler."""
        resume = restore_snapshot(
            checkpoint,
            model=self.accelerator.unwrap_model(self.model),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            data_fingerprint=self.data_fingerprint,
        )
        self.checkpoints.last_saved_step = resume.state.position.step
        return resume

    def train_step(self, window: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer update over an accumulation window; returns (loss sum, targets, grad norm)."""
        acc = self.accelerator
        targets = sum(target_count(batch) for batch in window)
        # Every process divides by the global target count; DDP then averages, hence the factor.
        global_targets = acc.reduce(targets.clone(), "sum") if acc.num_processes > 1 else targets
        scale = acc.num_processes / global_targets.clamp(min=1)
        loss_sum = torch.zeros((), device=acc.device)
        for index, batch in enumerate(window):
            last = index == len(window) - 1
            with nullcontext() if last else acc.no_sync(self.model):
                loss = self.loss(self.model, batch)
                acc.backward(loss * scale)
            loss_sum += loss.detach()
        grad_norm = acc.clip_grad_norm_(self.params, self.config.training.max_grad_norm)
        before = torch._foreach_mul([p.detach() for p in self.params], 1.0)  # copies of the trainable weights
        self.optimizer.step()
        self.update_ratio = _update_ratio(self.params, before)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, targets, grad_norm

    @torch.no_grad()
    def evaluate(self, step: int) -> float | None:
        """Token-weighted eval loss over the validation rows (None without a validation set)."""
        if len(self.rows.val) == 0:
            return None
        started = time.perf_counter()
        self.model.eval()
        loss_sum = torch.zeros((), device=self.accelerator.device, dtype=torch.float64)
        targets = torch.zeros((), device=self.accelerator.device, dtype=torch.long)
        for batch in self.eval_loader:
            loss_sum += self.loss(self.model, batch).double()
            targets += target_count(batch)
        self.model.train()
        loss_sum, targets = self.accelerator.reduce(loss_sum, "sum"), self.accelerator.reduce(targets, "sum")
        eval_loss = (loss_sum / targets.clamp(min=1)).item()
        self.eval_losses.append(eval_loss)
        duration = time.perf_counter() - started
        self.eval_time_s += duration
        self.bus.emit(
            EvalEnded(
                step=step,
                eval_loss=eval_loss,
                perplexity=math.exp(min(eval_loss, 50.0)),
                tokens=int(targets.item()),
                duration_s=duration,
            )
        )
        return eval_loss

    def _log(self, step: int, interval: _Interval, grad_norm: torch.Tensor) -> float:
        loss = (interval.loss_sum / interval.targets.clamp(min=1)).item()  # the one host sync per log
        if not math.isfinite(loss):
            self.save_adapter(self.run_dir / "failed")
            raise TrainingError(
                f"The training loss became {loss} at step {step}; the last adapter is in {self.run_dir / 'failed'}.",
                hint="Lower the learning rate (--lr), or keep --max-grad-norm at 1.0 or below.",
            )
        seconds = max(time.perf_counter() - interval.started, 1e-9)
        self.bus.emit(
            StepEnded(
                step=step,
                total_steps=self.total_steps,
                epoch=step / self.steps_per_epoch,
                loss=loss,
                lr=self.scheduler.get_last_lr()[0],
                grad_norm=float(grad_norm),
                tokens=interval.tokens,
                target_tokens=int(interval.targets.item()),
                examples=interval.examples,
                tokens_per_s=interval.tokens / seconds,
                examples_per_s=interval.examples / seconds,
                elapsed_s=self.state.position.train_time_s,  # training time before this step
                eta_s=seconds / max(interval.steps, 1) * (self.total_steps - step),
                update_ratio=float(self.update_ratio),
            )
        )
        return loss

    # ----------------------------------------------------------------- finish
    def save_adapter(self, directory: Path) -> Path:
        """Write the adapter in standard PEFT format plus the tokenizer (main process only)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.accelerator.unwrap_model(self.model).save_pretrained(directory, safe_serialization=True)
            self.tokenizer.save_pretrained(directory)
        return directory

    def merge(self, adapter_dir: Path, directory: Path) -> Path:
        """Merge the adapter into a fresh, unquantised copy of the base weights and save it."""
        from peft import PeftModel

        if self.accelerator.is_main_process:
            base = load_base_model(self.plan.source, self.precision, "none")
            merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
            merged.save_pretrained(directory, safe_serialization=True)
            self.tokenizer.save_pretrained(directory)
        return directory

    def describe(self) -> dict[str, Any]:
        """Run facts for the summary."""
        return {
            "model": self.plan.source.location,
            "model_reason": self.plan.source.reason,
            "family": self.plan.source.family.name,
            "device": self.hardware.device_name,
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "gradient_checkpointing": self.gradient_checkpointing,
            "fused_loss": self.loss.fused,
            "fast_lora_dropout": self.fast_dropout,
            "allocator_keeps_freed_memory": self.kept_freed_memory,
            "attention": self.attention,
            "fused_loss_reason": self.loss.reason,
            "chat_template": self.template_origin,
            "data_format": self.plan.data.format,
            "validation": self.plan.data.val_source,
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "train_rows": len(self.rows.train),
            "data": {"train": vars(self.rows.train_report), "val": vars(self.rows.val_report)},
        }


EVAL_SHARE = 0.25  # evaluation may cost up to this share of the training compute


def default_eval_interval(total_steps: int, tokens_per_step: float, val_tokens: int) -> int:
    """Steps between evaluations: ten per run, fewer when the validation set is large next to the run.

    A forward pass costs about a third of a training step per token, so evaluating
    ``val_tokens`` costs ``val_tokens / 3`` training tokens. The evaluation at step 0 and the
    one at the end always happen; an interval of ``total_steps`` means no others.
    """
    affordable = int(EVAL_SHARE * 3 * total_steps * tokens_per_step / max(val_tokens, 1))
    evaluations = min(10, max(1, affordable - 1))  # scheduled ones, the final one included
    return max(1, math.ceil(total_steps / evaluations))


def _update_ratio(params: list[torch.Tensor], before: list[torch.Tensor]) -> torch.Tensor:
    """Norm of the step's update over the norm of the weights (stays on the device: no sync)."""
    after = [p.detach() for p in params]
    update = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(torch._foreach_sub(after, before))))
    weight = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(after)))
    return update / weight.clamp(min=1e-12)


class _Interval:
    """Running sums between two log lines (kept on device: no host sync per step)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.loss_sum: Any = 0.0
        self.targets: Any = torch.zeros((), dtype=torch.long)
        self.tokens = 0
        self.examples = 0
        self.steps = 0

    def add(self, window: list[dict[str, torch.Tensor]], loss_sum: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss_sum = self.loss_sum + loss_sum
        self.targets = self.targets.to(targets.device) + targets
        self.tokens += sum(batch["n_tokens"] for batch in window)
        self.examples += sum(batch["n_examples"] for batch in window)
        self.steps += 1


def _windows(loader, size: int):
    """Group micro-batches into accumulation windows (the last one may be shorter)."""
    window = []
    for batch in loader:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window
