"""Recovery policies: classify a failure, decide what to do, within bounded budgets.

The loop asks; this module answers and records every action in the run's journal:

- out of memory (GPU or CPU): halve the micro-batch and double the accumulation, so the
  effective batch and the order of the data stay the same; once the micro-batch is one
  sequence, turn on gradient checkpointing; then give up (:class:`OutOfMemory`). An eval
  OOM halves only the eval batch.
- divergence: a non-finite loss skips the step (weights untouched); ``nan_tolerance`` in a
  row, or a loss spike, roll back to the last good state with half the learning rate
  (``ROLLBACK_LR_FACTOR``, applied by the rollback through the LR's owner); a spike that comes
  back at the same step after a rollback skips that batch. A loss far above where the run
  started skips once and rolls back the second time in a row, and an eval loss clearly above
  the step-0 eval rolls back at once, both with a quarter of the learning rate
  (``DIVERGED_LR_FACTOR``: a rate that far too high needs more than halving). Past
  ``max_rollbacks``, :class:`DivergenceError`.
- a batch that cannot be used (:class:`UnreadableBatch`): skipped, up to ``max_skipped_batches``.

Its state (micro-batch split, gradient checkpointing, budgets used) is saved in checkpoints
and survives rollbacks, so a resumed or rolled-back run keeps what recovery learned.
"""

from __future__ import annotations

import ctypes
import gc
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from llmc_cli.durable import disk_error
from llmc_cli.engine.journal import Journal
from llmc_cli.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DivergenceError,
    LlmcError,
    ModelError,
    OutOfMemory,
    UnreadableBatch,
)

ROLLBACK_LR_FACTOR = 0.5
DIVERGED_LR_FACTOR = 0.25
START_TOLERANCE = 2  # steps in a row far above the start before rolling back (one may be an odd batch)
DIVERGED = ("diverged", "eval-diverged")  # judged against where the run started


def rollback_lr_factor(verdict: str) -> float:
    """What a rollback for ``verdict`` multiplies the learning rate by."""
    return DIVERGED_LR_FACTOR if verdict in DIVERGED else ROLLBACK_LR_FACTOR


def classify(exc: BaseException) -> str:
    """``oom-gpu``, ``oom-cpu``, ``divergence``, ``disk``, ``checkpoint``, ``data``, ``config``, ``model``
    or ``other``."""
    if disk_error(exc):
        return "disk"
    if isinstance(exc, OutOfMemory):
        return getattr(exc, "kind", "oom-gpu")
    if isinstance(exc, torch.OutOfMemoryError):
        return "oom-gpu"
    if isinstance(exc, MemoryError):
        return "oom-cpu"
    if isinstance(exc, RuntimeError):
        text = str(exc)
        if "DefaultCPUAllocator" in text or "can't allocate memory" in text:
            return "oom-cpu"
        if "out of memory" in text.lower():
            return "oom-gpu"
    if isinstance(exc, DivergenceError):
        return "divergence"
    if isinstance(exc, CheckpointError):
        return "checkpoint"
    if isinstance(exc, DataError):
        return "data"
    if isinstance(exc, ConfigError):
        return "config"
    if isinstance(exc, ModelError):
        return "model"
    return "other"


def recoverable(exc: BaseException) -> str | None:
    """What recovery can do about an error raised inside a step or an evaluation: ``"data"`` (skip
    the batch), ``"oom-gpu"`` / ``"oom-cpu"`` (shrink and retry), or None (nothing: re-raise)."""
    if isinstance(exc, UnreadableBatch):
        return "data"
    kind = classify(exc)
    return kind if kind in ("oom-gpu", "oom-cpu") and not isinstance(exc, LlmcError) else None


@dataclass(frozen=True)
class Budget:
    enabled: bool = True
    max_oom_retries: int = 8  # enough to halve a micro-batch of 128 down to 1, then checkpoint
    max_rollbacks: int = 3
    nan_tolerance: int = 3
    max_skipped_batches: int = 10


@dataclass
class RecoveryState:
    """What recovery changed and spent; survives rollbacks and resumes."""

    split: int = 1  # each loader batch runs as this many micro-batches
    eval_split: int = 1
    gradient_checkpointing: bool = False  # turned on by recovery
    oom_retries: int = 0
    rollbacks: int = 0
    consecutive_bad: int = 0
    skipped_steps: list[int] = field(default_factory=list)
    spike_steps: list[int] = field(default_factory=list)  # spikes that caused a rollback

    def eval_parts(self) -> int:
        """The micro-batches an eval batch runs as: never larger than the training's (an evaluation
        needs less memory per row than a training step, so what fits in training fits here)."""
        return max(self.eval_split, self.split)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> RecoveryState:
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class MemoryPlan:
    split: int
    gradient_checkpointing: bool


class Recovery:
    """Decides, counts and reports; the loop carries the decisions out."""

    def __init__(
        self, budget: Budget, journal: Journal, batch_size: int, grad_accum: int, micro_batch: int | None = None
    ) -> None:
        self.budget = budget
        self.journal = journal
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.micro = min(micro_batch or batch_size, batch_size)  # rows per forward before any split
        self.state = RecoveryState()

    def cut(self, batch: dict[str, Any], evaluating: bool = False) -> list[dict[str, Any]]:
        """The micro-batches a loader batch runs as: pieces of at most ``micro_batch`` rows, each cut
        into as many parts as out-of-memory recovery has split it."""
        parts = self.state.eval_parts() if evaluating else self.state.split
        return [part for piece in split_rows(batch, self.micro) for part in split_batch(piece, parts)]

    # ------------------------------------------------------------ settings
    def settings(self, gradient_checkpointing: bool) -> dict[str, Any]:
        split = self.state.split
        pieces = -(-self.batch_size // self.micro)
        return {
            "micro_batch": -(-self.micro // split),
            "grad_accum": self.grad_accum * pieces * split,
            "effective_batch": self.batch_size * self.grad_accum,
            "gradient_checkpointing": gradient_checkpointing,
        }

    # --------------------------------------------------------- out of memory
    def on_oom(self, step: int, kind: str, error: str, rows: int, checkpointing: bool, evaluating: bool) -> MemoryPlan:
        """A bigger split and/or gradient checkpointing to retry with; raises OutOfMemory past the budget."""
        where = "evaluation" if evaluating else "training step"
        s = self.state
        rows = min(rows, self.micro)
        current = s.eval_parts() if evaluating else s.split
        can_split = -(-rows // current) > 1
        if (
            not self.budget.enabled
            or s.oom_retries >= self.budget.max_oom_retries
            or (not can_split and (checkpointing or evaluating))
        ):
            raise _out_of_memory(kind, step, where, error, self.settings(checkpointing), self.budget.enabled)
        s.oom_retries += 1
        free_memory()
        if evaluating:
            s.eval_split = current * 2
            self.journal.record(
                step,
                kind,
                "halved-eval-batch",
                f"Out of memory in evaluation: eval micro-batch "
                f"{-(-rows // s.eval_split)} from now on (training batch unchanged).",
                self.settings(checkpointing),
            )
            return MemoryPlan(s.eval_split, checkpointing)
        if can_split:
            s.split *= 2
            action, message = "halved-micro-batch", "halved the micro-batch and doubled accumulation"
        else:
            s.gradient_checkpointing = checkpointing = True
            action, message = "gradient-checkpointing", "turned on gradient checkpointing"
        settings = self.settings(checkpointing)
        self.journal.record(
            step,
            kind,
            action,
            f"Out of memory at step {step} ({'GPU' if kind == 'oom-gpu' else 'CPU'}): {message}; micro-batch "
            f"{settings['micro_batch']} x accumulation {settings['grad_accum']}, effective batch unchanged. "
            "Retrying the step.",
            settings,
        )
        return MemoryPlan(s.split, checkpointing)

    # ------------------------------------------------------------ divergence
    def on_bad_step(self, step: int, verdict: str, loss: float, checkpointing: bool) -> str:
        """``"skip"`` or ``"rollback"`` for a step whose loss is non-finite, a spike or far above the
        start (``"diverged"``), or an evaluation far above the step-0 eval (``"eval-diverged"``)."""
        s = self.state
        if not self.budget.enabled:
            raise _diverged(step, verdict, loss, "automatic recovery is off (auto_recovery=false)")
        s.consecutive_bad += 1
        repeat = verdict == "spike" and step in s.spike_steps
        tolerance = {"non-finite": self.budget.nan_tolerance, "diverged": START_TOLERANCE}.get(verdict, 1)
        if s.consecutive_bad < tolerance or repeat:
            if len(s.skipped_steps) >= self.budget.max_skipped_batches:
                raise _diverged(step, verdict, loss, f"{len(s.skipped_steps)} batches were skipped already")
            s.skipped_steps.append(step)
            why = (
                "the spike came back after a rollback"
                if repeat
                else f"far above where the run started, {s.consecutive_bad} in a row"
                if verdict == "diverged"
                else f"{s.consecutive_bad} in a row"
            )
            self.journal.record(
                step,
                verdict,
                "skipped-batch",
                f"Loss {loss:.4g} at step {step}: skipped that batch ({why}); weights unchanged.",
                self.settings(checkpointing),
            )
            return "skip"
        if s.rollbacks >= self.budget.max_rollbacks:
            raise _diverged(step, verdict, loss, f"{s.rollbacks} rollbacks did not help")
        s.rollbacks += 1
        s.consecutive_bad = 0
        if verdict == "spike":
            s.spike_steps.append(step)
        return "rollback"

    def rolled_back(
        self, step: int, verdict: str, loss: float, target_step: int, source: str, checkpointing: bool, lr_scale: float
    ) -> None:
        self.journal.record(
            step,
            verdict,
            "rolled-back",
            f"{'Eval loss' if verdict == 'eval-diverged' else 'Loss'} {loss:.4g} at step {step} ({verdict}): "
            f"rolled back to step {target_step} ({source}) with the "
            f"learning rate x{lr_scale:g} (rollback {self.state.rollbacks} of {self.budget.max_rollbacks}).",
            {**self.settings(checkpointing), "lr_scale": lr_scale},
        )

    def act_checkpoint(self, step: int, refusal: str) -> None:
        message = f"Refused checkpoint {refusal}; using an older state."
        self.journal.record(step, "checkpoint", "refused-checkpoint", message)

    def on_good_step(self) -> None:
        self.state.consecutive_bad = 0

    # ------------------------------------------------------------------ data
    def on_data_error(self, step: int, error: str, checkpointing: bool) -> None:
        s = self.state
        if not self.budget.enabled or len(s.skipped_steps) >= self.budget.max_skipped_batches:
            raise DataError(
                f"The batch of step {step} cannot be used: {error}",
                hint="Check the data file (llmc validates it before training); "
                f"{len(s.skipped_steps)} batches were skipped already.",
            )
        s.skipped_steps.append(step)
        self.journal.record(
            step,
            "data",
            "skipped-batch",
            f"The batch of step {step} could not be read ({error}); skipped it.",
            self.settings(checkpointing),
        )


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def release_memory() -> bool:
    """Free what a finished run left and hand glibc's free heap pages back to the system.

    Freed tensors go back to malloc's arenas, not to the system: after a SmolLM2 trial the
    process kept 2.1 GB RSS, and 2.9 GB after ten (``llmc tune``); with ``malloc_trim`` 0.5-0.7 GB.
    False where the C library has no ``malloc_trim`` (not glibc).
    """
    free_memory()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def split_batch(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """Cut a collated batch into up to ``parts`` micro-batches of whole rows.

    The token and example counts (plain ints) go with the first part, so sums over the
    window stay the same.
    """
    rows = batch["input_ids"].shape[0]
    if parts <= 1 or rows <= 1:
        return [batch]
    return split_rows(batch, -(-rows // parts))


def split_rows(batch: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """Cut a collated batch into pieces of ``size`` rows (the last may be smaller)."""
    rows = batch["input_ids"].shape[0]
    if rows <= size:
        return [batch]
    pieces = []
    for start in range(0, rows, size):
        piece = {
            k: v[start : start + size] if torch.is_tensor(v) else (v if start == 0 else 0) for k, v in batch.items()
        }
        pieces.append(piece)
    return pieces


def _out_of_memory(kind: str, step: int, where: str, error: str, settings: dict[str, Any], enabled: bool):
    device = "GPU" if kind == "oom-gpu" else "CPU"
    tried = (
        f"at micro-batch {settings['micro_batch']} with gradient checkpointing "
        f"{'on' if settings['gradient_checkpointing'] else 'off'}"
        if enabled
        else "automatic recovery is off (auto_recovery=false)"
    )
    exc = OutOfMemory(
        f"Out of {device} memory in the {where} at step {step}, {tried}: {error}",
        hint="Lower --max-length, use --quantize 4bit, pick a smaller model, or free memory used by other processes.",
    )
    exc.kind = kind
    return exc


def _diverged(step: int, verdict: str, loss: float, why: str) -> LlmcError:
    return DivergenceError(
        f"The training loss diverged at step {step} ({verdict}, loss {loss:.4g}) and recovery gave up: {why}.",
        hint="Lower the learning rate (--lr, e.g. 3-10x), keep --max-grad-norm at 1.0 or below, "
        "then `llmc train` again; the last good checkpoint is kept in the run.",
    )
