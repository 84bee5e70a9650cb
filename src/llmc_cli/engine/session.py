"""A training session: everything a run trains with, built once from its plan.

:func:`open_session` chooses precision for the hardware, loads the tokenizer, the data rows,
the model and its LoRA adapter, builds the optimizer, the schedule and the loaders, prepares
them with accelerate and checks the fast paths (fused loss, packed attention) against the
stock ones. The :class:`Session` it returns is complete: the loop, evaluation, checkpoints
and rollback read from it and never build anything themselves.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmc_cli.config.schema import RunConfig
from llmc_cli.data.dataset import Rows
from llmc_cli.data.packing import Collator, Row
from llmc_cli.data.tokenize import IGNORE
from llmc_cli.engine.dataprep import open_tokenizer, prepare_rows
from llmc_cli.engine.loss import TokenLoss, model_inputs
from llmc_cli.engine.plan import RunPlan
from llmc_cli.events import DataProgress, EventBus, RunStarted, TrainingWarning
from llmc_cli.models.kind import check_causal, check_vocabulary, load_config
from llmc_cli.models.loading import BILLION, add_lora, load_base_model, parameter_count
from llmc_cli.optimize.allocator import keep_freed_memory
from llmc_cli.optimize.attention import NAME as PACKED_ATTENTION
from llmc_cli.optimize.attention import matches_stock_attention, use_packed_attention
from llmc_cli.optimize.dropout import use_fast_lora_dropout
from llmc_cli.optimize.hardware import Hardware, choose_precision, detect

CPU_WIDTH_MULTIPLE = 64  # batch widths rounded up to this in bf16/fp16 on a CPU
ACCELERATE_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}
CHECK_TOKENS = 256  # tokens of the first row the fast paths are checked on (see check_slice)
CHECK_TARGETS = 32


@dataclass
class Session:
    """The objects and facts of one training session (one process)."""

    plan: RunPlan
    run_dir: Path
    hardware: Hardware
    precision: str
    precision_reason: str
    accelerator: Any
    tokenizer: Any
    template_origin: str
    rows: Rows
    data_fingerprint: str
    model: Any  # prepared by accelerate (possibly wrapped)
    params: list[torch.nn.Parameter]  # the trainable ones
    optimizer: Any
    scheduler: Any  # the planned schedule; the LR's owner multiplies it (engine/lr.py)
    train_loader: Any
    eval_loader: Any
    loss: TokenLoss
    attention: str
    gradient_checkpointing: bool
    fast_dropout: bool
    kept_freed_memory: bool
    total_params: int
    trainable_params: int
    steps_per_epoch: int
    total_steps: int
    eval_every: int

    @property
    def config(self) -> RunConfig:
        return self.plan.resolved.config

    def unwrapped(self):
        """The PEFT model under accelerate's wrappers."""
        return self.accelerator.unwrap_model(self.model)

    def enable_gradient_checkpointing(self) -> None:
        model = self.unwrapped()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        self.gradient_checkpointing = True

    def checkpoint_facts(self, batches_in_epoch: int) -> dict[str, Any]:
        """What a checkpoint's manifest records about where it came from."""
        return {
            "epoch_fraction": batches_in_epoch / max(1, len(self.train_loader)),
            "data_fingerprint": self.data_fingerprint,
            "model": self.plan.source.location,
            "workdir": os.getcwd(),
        }

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
            "data_cache": {
                "path": self.rows.cache_path,
                "reused": self.rows.reused,
                "seconds": round(self.rows.seconds, 3),
            },
        }


def open_session(plan: RunPlan, run_dir: Path, bus: EventBus, should_stop: Callable[[], bool] | None = None) -> Session:
    """Build everything the run trains with; warnings (data notes, slower fallbacks) go to ``bus``.

    ``should_stop`` is polled while the data is prepared (a stop request ends it there).
    """
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    cfg = plan.resolved.config
    hardware = detect()
    precision, precision_reason = choose_precision(cfg.model.precision, cfg.model.enable_mixed_precision, hardware)
    on_cpu = hardware.device == "cpu"
    accelerator = Accelerator(
        cpu=on_cpu,
        mixed_precision=ACCELERATE_PRECISION[precision],
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(cfg.training.seed)
    kept_freed_memory = on_cpu and keep_freed_memory()

    model_config = load_config(plan.source.location)
    check_causal(model_config, plan.source.location)
    tokenizer, template_origin = open_tokenizer(plan)
    check_vocabulary(model_config, tokenizer, plan.source.location)
    rows = prepare_rows(
        plan,
        tokenizer,
        progress=lambda stage, done, total, elapsed: bus.emit(DataProgress(stage, done, total, elapsed)),
        warn=lambda note: bus.emit(TrainingWarning("data", note)),
        should_stop=should_stop,
    )

    base = load_base_model(plan.source, precision, cfg.model.quantize)
    stock_attention = use_packed_attention(base) if cfg.data.packing else None
    total_params = parameter_count(base)
    checkpointing = cfg.model.enable_gradient_checkpointing
    checkpointing = total_params >= BILLION if checkpointing == "auto" else checkpointing
    model = add_lora(base, cfg.lora, checkpointing, cfg.model.quantize != "none")
    fast_dropout = on_cpu and use_fast_lora_dropout(model) > 0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.training.lr, weight_decay=cfg.training.weight_decay)

    # Half precision on a CPU runs on oneDNN: few distinct batch widths keep its memory bounded (data/packing.py).
    multiple = CPU_WIDTH_MULTIPLE if on_cpu and precision != "fp32" else 1
    collate = Collator(tokenizer.pad_token_id, packed=cfg.data.packing, multiple=multiple, limit=cfg.data.max_length)
    t = cfg.training
    generator = torch.Generator().manual_seed(t.seed)
    train_loader = DataLoader(rows.train, t.batch_size, shuffle=True, collate_fn=collate, generator=generator)
    eval_loader = DataLoader(rows.val, t.batch_size, collate_fn=collate)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)

    loss = TokenLoss(model)
    row = check_slice(rows.train[0])
    sample = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in collate([row]).items()}
    attention = _check_fast_paths(accelerator, model, base, loss, sample, precision, stock_attention, bus)
    steps_per_epoch, total_steps, eval_every = plan_steps(t, len(train_loader), rows)
    # Not prepared: accelerate would step it once per process; this one steps once per update.
    scheduler = get_scheduler(
        "constant_with_warmup" if t.scheduler == "constant" else t.scheduler,
        optimizer,
        num_warmup_steps=round(t.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    return Session(
        plan=plan,
        run_dir=run_dir,
        hardware=hardware,
        precision=precision,
        precision_reason=precision_reason,
        accelerator=accelerator,
        tokenizer=tokenizer,
        template_origin=template_origin,
        rows=rows,
        data_fingerprint=rows.fingerprint,
        model=model,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        eval_loader=eval_loader,
        loss=loss,
        attention=attention,
        gradient_checkpointing=checkpointing,
        fast_dropout=fast_dropout,
        kept_freed_memory=kept_freed_memory,
        total_params=total_params,
        trainable_params=sum(p.numel() for p in params),
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        eval_every=eval_every,
    )


def _check_fast_paths(accelerator, model, base, loss, sample, precision, stock_attention, bus: EventBus) -> str:
    """Compare the fused loss and packed attention with the stock paths on a real batch; a path that
    differs on this model is turned off with a warning. Returns the attention in use."""
    attention = getattr(base.config, "_attn_implementation", "unknown")
    with accelerator.autocast():
        if not loss.verify(model, sample, rtol=1e-4 if precision == "fp32" else 2e-2):
            bus.emit(TrainingWarning("loss", f"Using full-vocabulary logits: {loss.reason}."))
        if stock_attention:
            atol = 1e-3 if precision == "fp32" else 5e-2
            if matches_stock_attention(model, base, model_inputs(sample), stock_attention, atol):
                attention = PACKED_ATTENTION
            else:
                attention = stock_attention
                bus.emit(TrainingWarning("attention", f"Packed attention differs on this model; using {attention}."))
    return attention


def check_slice(row: Row) -> Row:
    """The start of ``row`` that the fast paths are checked on: ``CHECK_TOKENS`` tokens, or more until
    it holds ``CHECK_TARGETS`` loss-carrying ones. The stock loss builds full-vocabulary logits (and
    their float copy and log-softmax), so a whole row of a long, large-vocabulary model would cost more
    memory than a training step; a prefix of real data checks the same code paths."""
    labels = np.asarray(row.labels)
    targets = np.flatnonzero(labels[1:] != IGNORE)
    end = max(CHECK_TOKENS, int(targets[CHECK_TARGETS - 1]) + 2 if len(targets) >= CHECK_TARGETS else len(labels))
    if end >= len(labels):
        return row
    positions = np.asarray(row.position_ids)[:end]
    return Row(np.asarray(row.input_ids)[:end], labels[:end], positions, int((positions == 0).sum()))


def plan_steps(training, batches_per_epoch: int, rows: Rows) -> tuple[int, int, int]:
    """Optimizer steps per epoch, in the run, and between evaluations."""
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / training.grad_accum))
    total_steps = training.max_steps or max(1, math.ceil(training.epochs * steps_per_epoch))
    eval_every = training.eval_every or default_eval_interval(
        total_steps, rows.train_report.tokens / steps_per_epoch, rows.val_report.tokens
    )
    return steps_per_epoch, total_steps, eval_every


def default_eval_interval(total_steps: int, tokens_per_step: float, val_tokens: int) -> int:
    """Steps between evaluations: ``[eval] per_run`` of optimize/rules.toml (10), fewer when the
    validation set is large next to the run.

    A forward pass costs about a third of a training step per token, so evaluating
    ``val_tokens`` costs ``val_tokens / 3`` training tokens; evaluation may cost up to
    ``[eval] max_share`` of the training compute. The evaluation at step 0 and the one at the
    end always happen; an interval of ``total_steps`` means no others.
    """
    from llmc_cli.optimize.rules import load_rules

    rule = load_rules().eval
    affordable = int(rule.max_share * 3 * total_steps * tokens_per_step / max(val_tokens, 1))
    evaluations = min(rule.per_run, max(1, affordable - 1))  # scheduled ones, the final one included
    return max(1, math.ceil(total_steps / evaluations))
