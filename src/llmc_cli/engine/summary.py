"""What a run reports at its end: the loop's :class:`FitResult`, and ``summary.json`` built from it."""

from __future__ import annotations

import dataclasses
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class FitResult:
    """What the loop measured; every field goes into ``summary.json`` under its own name."""

    steps: int
    epochs: float
    train_time_s: float  # optimizer steps only
    eval_time_s: float  # evaluations, including the one at step 0 and the final one, and sample answers
    checkpoint_time_s: float  # saving checkpoints, this session
    tokens: int
    initial_eval_loss: float | None
    final_eval_loss: float | None
    best_eval_loss: float | None  # the lowest of every evaluation, those a rollback undid included
    final_train_loss: float | None
    stopped_early: bool
    restored_best_step: int | None  # early stopping put back the adapter of this step
    lr_multiplier: float  # on top of the schedule at the end (plateau x instability x rollback)
    recovery: dict[str, Any]  # what automatic recovery changed and spent
    adjustments: list[dict[str, Any]]  # every adjustment the engine made, in order
    samples: dict[str, Any] | None = None  # sample answers' scores, first and last (engine/samples.py)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.train_time_s, 1e-9)


def build_summary(
    status: str,
    run_dir: Path,
    wall_time_s: float,
    facts: dict[str, Any],
    result: FitResult | None = None,
    adapter_dir: Path | None = None,
    error: BaseException | None = None,
) -> dict[str, Any]:
    """``summary.json``: status, where things are, timings and memory, the session's facts and,
    when training ran to its end, the loop's result."""
    summary: dict[str, Any] = {
        "status": status,
        "run_dir": str(run_dir),
        "adapter_dir": str(adapter_dir) if adapter_dir else None,
        "wall_time_s": round(wall_time_s, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **facts,
    }
    if result is not None:
        for key, value in dataclasses.asdict(result).items():
            summary[key] = round(value, 4 if key == "epochs" else 3) if key.endswith(("_s", "epochs")) else value
        summary["tokens_per_s"] = round(result.tokens_per_s, 1)
    if error is not None:
        summary["error"] = str(error) or type(error).__name__
        if getattr(error, "report", None):
            summary["failure_report"] = str(error.report)
    return summary


def peak_rss_mb(status: Path = Path("/proc/self/status")) -> float:
    """This process's peak RSS. On Linux ``VmHWM``: ``ru_maxrss`` keeps the RSS of the parent at the
    fork that started this process (a 550 MB benchmark script made every child "peak" at 550 MB)."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)
