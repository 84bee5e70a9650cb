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

from llmc_cli import faults
from llmc_cli.checkpoints import catalog
from llmc_cli.checkpoints.manager import CheckpointManager, Policy
from llmc_cli.checkpoints.manifest import verify
from llmc_cli.checkpoints.state import ADAPTER_WEIGHTS, TrainerState, restore_rng
from llmc_cli.data.dataset import Rows, build_rows, rows_fingerprint
from llmc_cli.data.packing import Collator
from llmc_cli.data.templates import ensure_chat_template
from llmc_cli.engine.events import (
    Adjustment,
    EvalEnded,
    EventBus,
    RolledBack,
    RunStarted,
    StepEnded,
    TrainingWarning,
)
from llmc_cli.engine.interrupt import StopRequest
from llmc_cli.engine.loss import TokenLoss, model_inputs, target_count
from llmc_cli.engine.plan import RunPlan
from llmc_cli.engine.recovery import Budget, Recovery, RecoveryState, classify, split_batch
from llmc_cli.engine.snapshot import MemorySnapshot, Resume, restore_snapshot, write_snapshot
from llmc_cli.engine.stability import Controls, StabilityAdvice, scale_lr
from llmc_cli.errors import DataError, DivergenceError, LlmcError, RunInterrupted
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
    stopped_early: bool = False
    restored_best_step: int | None = None  # early stopping put back the adapter of this step
    recovery: dict[str, Any] | None = None  # what automatic recovery changed and did


@dataclass
class StepDone:
    """An applied optimizer step (loss and targets stay on the device)."""

    loss_sum: torch.Tensor
    targets: torch.Tensor
    grad_norm: float  # before clipping
    clip_threshold: float
    update_ratio: torch.Tensor


class _Rollback(Exception):  # noqa: N818 - control flow inside the loop, never seen outside
    def __init__(self, step: int, verdict: str, loss: float) -> None:
        super().__init__(f"roll back from step {step}")
        self.step, self.verdict, self.loss = step, verdict, loss


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
        self.faults = faults.TrainingFaults()
        self.stopped_early = False
        self.restored_best: int | None = None
        self.interval = _Interval()
        self._pending_rng: dict[str, Any] | None = None

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
        self.controls = Controls.from_config(cfg)
        self.advice = StabilityAdvice()
        self.bus.subscribe(self.advice)
        budget = Budget(
            run.auto_recovery, run.max_oom_retries, run.max_rollbacks, run.nan_tolerance, run.max_skipped_batches
        )
        self.recovery = Recovery(budget, self.bus, cfg.training.batch_size, cfg.training.grad_accum)
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
        interval, at each epoch end and when a stop is requested. A divergence rolls the run
        back to the last good state (``_roll_back``); early stopping ends it before the plan.
        """
        self._begin(resume)
        pos = self.state.position
        while pos.step < self.total_steps and not self.stop.requested and not self.stopped_early:
            try:
                self._epoch()
            except _Rollback as rollback:
                self._roll_back(rollback)
            pos = self.state.position
        pos.tokens += self.interval.tokens
        self.interval = _Interval()
        if self.stop.requested:
            self.bus.emit(TrainingWarning("interrupted", f"{self.stop.reason}: stopped after step {pos.step}"))
            saved = self._checkpoint("interrupt")
            where = f"checkpoint {saved}" if saved else "no checkpoint (saving failed; see the warning)"
            raise RunInterrupted(
                f"Training stopped by {self.stop.reason} after step {pos.step} of {self.total_steps}; "
                f"state saved as {where}.",
                hint=f"Continue exactly where it stopped with: llmc resume {self.run_dir}",
            )
        state = self.state
        if self.controls.early.enabled:
            self._restore_best()
        final = self.eval_losses[-1] if state.eval_history and state.eval_history[-1][0] == pos.step else None
        if final is None or self.restored_best is not None:
            final = self._evaluate_and_record(pos.step, observe=False)
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
            stopped_early=self.stopped_early,
            restored_best_step=self.restored_best,
            recovery=self.recovery.state.to_json(),
        )

    def _begin(self, resume: Resume | None) -> None:
        """Take the state to start from, and keep a copy of it in memory as the first rollback target."""
        from llmc_cli.checkpoints.state import capture_rng

        self._adopt(resume.state if resume else TrainerState(), resume.rng if resume else None)
        if resume is not None:
            self.recovery.state = RecoveryState.from_json(resume.state.recovery)
            if self.recovery.state.gradient_checkpointing and not self.gradient_checkpointing:
                self._enable_gradient_checkpointing()
        else:
            self.state.initial_eval_loss = self._evaluate_and_record(0)
        self.model.train()
        rng = self._pending_rng if self._pending_rng is not None else capture_rng()
        self._pending_rng = rng
        self.origin = MemorySnapshot.capture(self.params, self.optimizer, self.scheduler, self._saved_state(), rng)

    def _adopt(self, state: TrainerState, rng: dict[str, Any] | None) -> None:
        self.state = state
        self._pending_rng = rng
        self.eval_losses = [loss for _, loss in state.eval_history]
        self.controls.load_state_dict(state.controls)
        self.interval = _Interval()

    def _epoch(self) -> None:
        """Train from the current position to the end of its epoch, the plan, or a stop."""
        cfg = self.config.training
        pos = self.state.position
        self.train_loader.set_epoch(pos.epoch)
        tick = time.perf_counter()  # training time: steps, data and logging; not eval or saving
        loader = self.train_loader
        if pos.batches_in_epoch:
            loader = self.accelerator.skip_first_batches(self.train_loader, pos.batches_in_epoch)
        # RNG goes back to the saved state at the moment the uninterrupted run saved it:
        # before a new epoch's iterator is made, or after the resumed one's.
        if self._pending_rng is not None and pos.batches_in_epoch == 0:
            restore_rng(self._pending_rng)
            self._pending_rng = None
        batches = iter(loader)
        if self._pending_rng is not None:
            restore_rng(self._pending_rng)
            self._pending_rng = None
        for window in _windows(batches, cfg.grad_accum):
            done = self._step(window)
            pos.step += 1
            pos.batches_in_epoch += len(window)
            if done is not None:
                self.interval.add(window, done.loss_sum, done.targets)
                self.last_step = done
            last = pos.step == self.total_steps
            if (pos.step % cfg.log_every == 0 or last) and self.interval.steps:
                self.state.last_train_loss = self._log(pos.step, self.interval, self.last_step)
                pos.tokens += self.interval.tokens
                self.interval = _Interval()
            pos.train_time_s += time.perf_counter() - tick
            self._follow_advice(pos.step)
            if pos.step % self.eval_every == 0 and not last:
                self._evaluate_and_record(pos.step)
                if self.controls.early.enabled and self.controls.early.best_step == pos.step:
                    self._checkpoint("best")
            if self.checkpoints.due(pos.step):
                self._checkpoint("interval")
            tick = self.interval.started = time.perf_counter()
            if last or self.stop.requested or self.stopped_early:
                return
        pos.epoch += 1
        pos.batches_in_epoch = 0
        self._checkpoint("epoch")

    def _follow_advice(self, step: int) -> None:
        """Lower the LR when the monitors report oscillation or exploding gradients."""
        warning = self.advice.take(step)
        if warning is None:
            return
        self._lower_lr(step, self.controls.plateau.reduce(), "instability", warning.message)

    def _lower_lr(self, step: int, factor: float, cause: str, why: str) -> None:
        """Apply a factor the adaptive-LR control chose (1.0: nothing to do) and report it."""
        if factor == 1.0:
            return
        scale_lr(self.optimizer, self.scheduler, factor)
        scale = self.controls.plateau.scale
        self.bus.emit(
            Adjustment(
                step=step,
                cause=cause,
                action="lowered-lr",
                message=f"{why} Learning rate x{factor:g} (now x{scale:g} of the schedule).",
                settings={"lr": self.scheduler.get_last_lr()[0], "plateau_scale": scale},
            )
        )

    def _roll_back(self, rollback: _Rollback) -> None:
        """Go back to the newest good state before the failing step, with the lowered learning rate."""
        target, refused = self._rollback_target(rollback.step)
        for line in refused:
            self.recovery.act_checkpoint(rollback.step, line)
        if target is None:
            resume, source = self.origin.restore(self.params, self.optimizer, self.scheduler), "start of this session"
        else:
            resume, source = self.restore(target), str(target)
        baked = RecoveryState.from_json(resume.state.recovery).lr_scale  # already in the scheduler's base LRs
        self._adopt(resume.state, resume.rng)
        scale_lr(self.optimizer, self.scheduler, self.recovery.state.lr_scale / baked)
        to_step = resume.state.position.step
        self.bus.emit(RolledBack(step=to_step, from_step=rollback.step, source=source))
        self.recovery.rolled_back(
            rollback.step, rollback.verdict, rollback.loss, to_step, source, self.gradient_checkpointing
        )

    def _rollback_target(self, step: int) -> tuple[Path | None, list[str]]:
        """The newest verified checkpoint of this session before ``step`` (None: its start is newest)."""
        target, failures = catalog.valid_before(self.run_dir, step, since=self.origin.step)
        return target, [f"{f.path.name}: {f.reason()}" for f in failures]

    def _restore_best(self) -> None:
        """With early stopping, finish on the adapter of the best evaluation (kept as a checkpoint)."""
        best_step = self.controls.early.best_step
        if best_step is None or best_step == self.state.position.step:
            return
        path = self.run_dir / catalog.CHECKPOINTS / catalog.checkpoint_name(best_step)
        if not path.is_dir() or not verify(path).ok:
            self.bus.emit(
                TrainingWarning(
                    "early-stopping", f"The best adapter (step {best_step}) was not saved; keeping the last one."
                )
            )
            return
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.accelerator.unwrap_model(self.model), load_file(path / ADAPTER_WEIGHTS))
        self.restored_best = best_step
        self.bus.emit(
            Adjustment(
                step=self.state.position.step,
                cause="early-stopping",
                action="restored-best",
                message=f"Restored the best adapter, from step {best_step} (eval loss {self.controls.early.best:.4f}).",
            )
        )

    def _evaluate_and_record(self, step: int, observe: bool = True) -> float | None:
        loss = self.evaluate(step)
        if loss is None:
            return None
        self.state.eval_history.append((step, loss))
        if observe and step > 0:
            why = f"Eval loss has not improved for {self.controls.plateau.patience} evaluations."
            self._lower_lr(step, self.controls.plateau.observe(loss), "plateau", why)
            if self.controls.early.observe(step, loss):
                self.stopped_early = True
                early = self.controls.early
                self.bus.emit(
                    Adjustment(
                        step=step,
                        cause="early-stopping",
                        action="stopped",
                        message=f"Eval loss has not improved for {early.patience} evaluations (best "
                        f"{early.best:.4f} at step {early.best_step}): stopping early.",
                    )
                )
        return loss

    def _saved_state(self) -> TrainerState:
        """A copy of the loop's state with the controls and recovery state in it, as checkpoints hold it."""
        saved = TrainerState.from_json(self.state.to_json())
        saved.controls = self.controls.state_dict()
        saved.recovery = self.recovery.state.to_json()
        return saved

    def _checkpoint(self, reason: str) -> Path | None:
        """Save a checkpoint of the current state (main process writes; all wait)."""
        pos = self.state.position
        saved_state = self._saved_state()
        if pos.batches_in_epoch >= len(self.train_loader):  # an epoch's last step: next is a new epoch
            saved_state.position.epoch += 1
            saved_state.position.batches_in_epoch = 0
        if not _all_finite(self.params):  # never write weights that are NaN or Inf
            self.bus.emit(TrainingWarning("checkpoint", f"Not saving step {pos.step}: the adapter holds NaN/Inf."))
            return None
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

    def save_failure_state(self, error: BaseException) -> Path | None:
        """After a failure, keep a resumable checkpoint: the last good state for a divergence, else the current one."""
        if not hasattr(self, "origin"):
            return None
        if isinstance(error, DivergenceError):
            target, _ = self._rollback_target(self.state.position.step + 1)
            if target is not None:
                return target
            resume = self.origin.restore(self.params, self.optimizer, self.scheduler)
            self._adopt(resume.state, resume.rng)
        try:
            return self._checkpoint("failure")
        except Exception:  # the report matters more than this save
            return None

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

    def _step(self, window: list[dict[str, Any]]) -> StepDone | None:
        """One optimizer step over ``window``, recovering from out-of-memory and unreadable batches.

        Returns None when the step was skipped (its data consumed, the weights untouched).
        Raises ``_Rollback`` when recovery decides to go back to the last good state.
        """
        step = self.state.position.step + 1
        while True:
            try:
                return self.train_step(window, step)
            except Exception as exc:  # noqa: BLE001 - classified below; anything else is re-raised
                kind = classify(exc)
                if kind not in ("oom-gpu", "oom-cpu", "data") or isinstance(exc, LlmcError):
                    raise
                error = f"{type(exc).__name__}: {exc}"
            # Outside the except block: the exception (and the activations its frames hold) is gone.
            self.optimizer.zero_grad(set_to_none=True)
            if kind == "data":
                self.recovery.on_data_error(step, error, self.gradient_checkpointing)
                self.scheduler.step()
                return None
            rows = window[0]["input_ids"].shape[0]
            plan = self.recovery.on_oom(step, kind, error, rows, self.gradient_checkpointing, evaluating=False)
            if plan.gradient_checkpointing and not self.gradient_checkpointing:
                self._enable_gradient_checkpointing()

    def train_step(self, window: list[dict[str, Any]], step: int) -> StepDone | None:
        """Forward and backward over the window, check the loss, then clip and update (or skip)."""
        acc = self.accelerator
        targets = sum(target_count(batch) for batch in window)
        # Every process divides by the global target count; DDP then averages, hence the factor.
        multi = acc.num_processes > 1
        global_targets = acc.reduce(targets.clone(), "sum") if multi else targets
        scale = acc.num_processes / global_targets.clamp(min=1)
        micro = [part for batch in window for part in split_batch(batch, self.recovery.state.split)]
        factor = self.faults.loss_factor(step)
        loss_sum = torch.zeros((), device=acc.device)
        for index, batch in enumerate(micro):
            last = index == len(micro) - 1
            if last:
                self.faults.in_step(step)
            with nullcontext() if last else acc.no_sync(self.model):
                loss = self.loss(self.model, batch)
                if factor != 1.0:
                    loss = loss * factor
                acc.backward(loss * scale)
            loss_sum += loss.detach()
        threshold = self.controls.clipper.threshold()
        grad_norm = acc.clip_grad_norm_(self.params, threshold)
        total = acc.reduce(loss_sum.clone(), "sum") if multi else loss_sum
        # The one host sync per step: every process sees the same loss and norm, so all decide alike.
        mean_loss, norm = torch.stack([total / global_targets.clamp(min=1), grad_norm.float()]).tolist()
        verdict = self.controls.guard.check(mean_loss) or (None if math.isfinite(norm) else "non-finite")
        if verdict is not None:
            self.optimizer.zero_grad(set_to_none=True)
            if self.recovery.on_bad_step(step, verdict, mean_loss, self.gradient_checkpointing) == "rollback":
                raise _Rollback(step, verdict, mean_loss)
            self.scheduler.step()  # a skipped step keeps its place in the schedule
            return None
        self.recovery.on_good_step()
        self.controls.guard.record(mean_loss)
        self.controls.clipper.record(norm)
        before = torch._foreach_mul([p.detach() for p in self.params], 1.0)  # copies of the trainable weights
        self.optimizer.step()
        update_ratio = _update_ratio(self.params, before)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepDone(loss_sum, targets, norm, threshold, update_ratio)

    def _enable_gradient_checkpointing(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        self.gradient_checkpointing = True

    @torch.no_grad()
    def evaluate(self, step: int) -> float | None:
        """Token-weighted eval loss over the validation rows (None without a validation set).

        Out of memory here halves only the eval micro-batch and evaluates again.
        """
        if len(self.rows.val) == 0:
            return None
        started = time.perf_counter()
        self.model.eval()
        while True:
            try:
                loss_sum, targets = self._eval_sums(step)
                break
            except Exception as exc:  # noqa: BLE001
                kind = classify(exc)
                if kind not in ("oom-gpu", "oom-cpu"):
                    self.model.train()
                    raise
                error = f"{type(exc).__name__}: {exc}"
            rows = self.config.training.batch_size
            self.recovery.on_oom(step, kind, error, rows, self.gradient_checkpointing, evaluating=True)
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

    def _eval_sums(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        loss_sum = torch.zeros((), device=self.accelerator.device, dtype=torch.float64)
        targets = torch.zeros((), device=self.accelerator.device, dtype=torch.long)
        self.faults.in_eval(step)
        for batch in self.eval_loader:
            for part in split_batch(batch, self.recovery.state.eval_split):
                loss_sum += self.loss(self.model, part).double()
                targets += target_count(part)
        return loss_sum, targets

    def _log(self, step: int, interval: _Interval, last: StepDone) -> float:
        loss = (interval.loss_sum / interval.targets.clamp(min=1)).item()
        seconds = max(time.perf_counter() - interval.started, 1e-9)
        self.bus.emit(
            StepEnded(
                step=step,
                total_steps=self.total_steps,
                epoch=step / self.steps_per_epoch,
                loss=loss,
                lr=self.scheduler.get_last_lr()[0],
                grad_norm=last.grad_norm,
                tokens=interval.tokens,
                target_tokens=int(interval.targets.item()),
                examples=interval.examples,
                tokens_per_s=interval.tokens / seconds,
                examples_per_s=interval.examples / seconds,
                elapsed_s=self.state.position.train_time_s,  # training time before this step
                eta_s=seconds / max(interval.steps, 1) * (self.total_steps - step),
                update_ratio=float(last.update_ratio),
                clip_threshold=last.clip_threshold,
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


def _all_finite(params: list[torch.Tensor]) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())


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
