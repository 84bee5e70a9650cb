"""Evaluation: the token-weighted loss over the validation rows, with an out-of-memory fallback."""

from __future__ import annotations

import math
import time

import torch

from llmc_cli.engine.loss import target_count
from llmc_cli.engine.recovery import Recovery, recoverable
from llmc_cli.engine.session import Session
from llmc_cli.events import EvalEnded, EventBus
from llmc_cli.faults import Faults


class Evaluator:
    """Evaluates the session's model; counts the time it takes and keeps the latest result."""

    def __init__(self, session: Session, recovery: Recovery, bus: EventBus, faults: Faults) -> None:
        self.session = session
        self.recovery = recovery
        self.bus = bus
        self.faults = faults
        self.time_s = 0.0
        self.last: EvalEnded | None = None

    @torch.no_grad()
    def __call__(self, step: int) -> float | None:
        """The eval loss at ``step`` (None without a validation set), emitted as ``EvalEnded``.

        Out of memory halves only the eval micro-batch (recovery decides, within its budget)
        and evaluates again.
        """
        s = self.session
        if len(s.rows.val) == 0:
            return None
        started = time.perf_counter()
        s.model.eval()
        try:
            while True:
                try:
                    loss_sum, targets = self._sums(step)
                    break
                except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
                    kind = recoverable(exc)
                    if kind not in ("oom-gpu", "oom-cpu"):
                        raise
                    error = f"{type(exc).__name__}: {exc}"
                # Outside the except block: the exception (and the activations its frames hold) is gone.
                rows = s.config.training.batch_size
                self.recovery.on_oom(step, kind, error, rows, s.gradient_checkpointing, evaluating=True)
        finally:
            s.model.train()
        loss_sum, targets = s.accelerator.reduce(loss_sum, "sum"), s.accelerator.reduce(targets, "sum")
        eval_loss = (loss_sum / targets.clamp(min=1)).item()
        duration = time.perf_counter() - started
        self.time_s += duration
        self.last = EvalEnded(
            step=step,
            eval_loss=eval_loss,
            perplexity=math.exp(min(eval_loss, 50.0)),
            tokens=int(targets.item()),
            duration_s=duration,
        )
        self.bus.emit(self.last)
        return eval_loss

    def _sums(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.session
        loss_sum = torch.zeros((), device=s.accelerator.device, dtype=torch.float64)
        targets = torch.zeros((), device=s.accelerator.device, dtype=torch.long)
        self.faults.in_eval(step)
        for batch in s.eval_loader:
            for part in self.recovery.cut(batch, evaluating=True):
                loss_sum += s.loss(s.model, part).double()
                targets += target_count(part)
        return loss_sum, targets
