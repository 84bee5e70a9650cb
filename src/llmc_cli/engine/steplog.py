"""What each optimizer step reports, and the log line (``StepEnded``) built from several of them.

Sums stay on the device between log lines: reading a loss back to the host every step would
make the GPU wait; the one read per step the loop needs (loss and gradient norm, to decide
before the optimizer applies a bad step) is taken there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from llmc_cli.events import StepEnded


@dataclass
class StepDone:
    """An applied optimizer step (loss and targets stay on the device)."""

    loss_sum: torch.Tensor
    targets: torch.Tensor
    loss: float  # mean over the window's target tokens
    grad_norm: float  # before clipping
    clip_threshold: float
    update_ratio: torch.Tensor


def update_ratio(params: list[torch.Tensor], before: list[torch.Tensor]) -> torch.Tensor:
    """Norm of the step's update over the norm of the weights (stays on the device: no sync)."""
    after = [p.detach() for p in params]
    update = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(torch._foreach_sub(after, before))))
    weight = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(after)))
    return update / weight.clamp(min=1e-12)


class StepLog:
    """Running sums between two log lines."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.loss_sum: Any = 0.0
        self.targets: Any = torch.zeros((), dtype=torch.long)
        self.tokens = self.examples = self.steps = 0
        self.last: StepDone | None = None

    def add(self, window: list[dict[str, Any]], done: StepDone) -> None:
        self.loss_sum = self.loss_sum + done.loss_sum
        self.targets = self.targets.to(done.targets.device) + done.targets
        self.tokens += sum(batch["n_tokens"] for batch in window)
        self.examples += sum(batch["n_examples"] for batch in window)
        self.steps += 1
        self.last = done

    def event(self, step: int, total_steps: int, steps_per_epoch: int, lr: float, elapsed_s: float) -> StepEnded:
        """The log line for the steps added since the last one (at least one)."""
        assert self.last is not None
        seconds = max(time.perf_counter() - self.started, 1e-9)
        return StepEnded(
            step=step,
            total_steps=total_steps,
            epoch=step / steps_per_epoch,
            loss=(self.loss_sum / self.targets.clamp(min=1)).item(),
            lr=lr,
            grad_norm=self.last.grad_norm,
            tokens=self.tokens,
            target_tokens=int(self.targets.item()),
            examples=self.examples,
            tokens_per_s=self.tokens / seconds,
            examples_per_s=self.examples / seconds,
            elapsed_s=elapsed_s,
            eta_s=seconds / max(self.steps, 1) * (total_steps - step),
            update_ratio=float(self.last.update_ratio),
            clip_threshold=self.last.clip_threshold,
        )
