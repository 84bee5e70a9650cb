"""When to save, and which checkpoints to keep.

The loop asks :meth:`CheckpointManager.due` at each step boundary and calls :meth:`save`
with a function that writes the files; the manager commits them atomically, reports the
outcome as events and rotates: the newest ``keep_last`` plus the best ``keep_best`` by the
chosen metric stay, everything else goes, and only after a newer checkpoint is complete. A
failed save (a full disk, say) removes its partial files, keeps every older checkpoint and
either lets training go on (``on_error="continue"``) or stops it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmc_cli.checkpoints import catalog
from llmc_cli.checkpoints.commit import clean_unfinished, commit
from llmc_cli.checkpoints.retention import prune
from llmc_cli.durable import disk_error, disk_full
from llmc_cli.events import CheckpointSaved, EventBus, TrainingWarning
from llmc_cli.faults import NO_FAULTS, Faults


@dataclass(frozen=True)
class Policy:
    interval_steps: int
    interval_minutes: float | None
    keep_last: int
    keep_best: int
    metric: str
    on_error: Literal["continue", "stop"]

    @classmethod
    def from_settings(cls, run) -> Policy:
        """The policy a run's settings (``RunConfig.run``) ask for."""
        return cls(
            interval_steps=run.checkpoint_interval,
            interval_minutes=run.checkpoint_minutes,
            keep_last=run.max_checkpoints,
            keep_best=run.keep_best_checkpoints,
            metric=run.checkpoint_metric,
            on_error=run.on_checkpoint_error,
        )


class CheckpointManager:
    """Saves and rotates the checkpoints of one run directory."""

    def __init__(self, run_dir: Path, policy: Policy, bus: EventBus, faults: Faults = NO_FAULTS) -> None:
        self.run_dir = run_dir
        self.root = run_dir / catalog.CHECKPOINTS
        self.policy = policy
        self.bus = bus
        self.faults = faults
        self.last_saved_step: int | None = None
        self._last_saved_at = time.monotonic()
        for name in clean_unfinished(self.root):
            bus.emit(TrainingWarning("checkpoint", f"Removed unfinished checkpoint {name} left by an earlier crash."))

    def due(self, step: int) -> bool:
        if step == self.last_saved_step:
            return False
        if step % self.policy.interval_steps == 0:
            return True
        minutes = self.policy.interval_minutes
        return minutes is not None and time.monotonic() - self._last_saved_at >= 60 * minutes

    def save(self, step: int, write: Callable[[Path], dict[str, Any]], reason: str) -> Path | None:
        """Commit a checkpoint for ``step``; None when the save failed and training may go on."""
        if step == self.last_saved_step:
            return self.root / catalog.checkpoint_name(step)
        started = time.perf_counter()
        try:
            path = commit(self.root, catalog.checkpoint_name(step), write, step=step, faults=self.faults)
        except Exception as exc:  # noqa: BLE001 - any library's full-disk error; others re-raised
            if not disk_error(exc):
                raise
            full = disk_full(exc, f"the checkpoint of step {step}", self.root, self._expected_size())
            message = (
                f"Checkpoint at step {step} could not be written to {self.root}: {full.detail}; older ones are intact."
            )
            going_on = self.policy.on_error == "continue"
            if going_on and reason in ("interval", "epoch", "best"):
                message += " Training goes on."
            self.bus.emit(TrainingWarning("checkpoint", message))
            if not going_on:
                full.hint = "Free disk space, then `llmc resume` this run; or set on_checkpoint_error=continue."
                raise full from exc
            return None
        self.last_saved_step = step
        self._last_saved_at = time.monotonic()
        policy = self.policy
        removed = prune(self.run_dir, policy.keep_last, policy.keep_best, policy.metric, faults=self.faults, step=step)
        entry = next(e for e in catalog.entries(self.run_dir) if e.path == path)
        self.bus.emit(
            CheckpointSaved(
                step=step,
                path=str(path),
                reason=reason,
                size_bytes=entry.size_bytes,
                duration_s=time.perf_counter() - started,
                removed=[e.path.name for e in removed],
            )
        )
        return path

    def _expected_size(self) -> int | None:
        """The size of the newest complete checkpoint: about what the next one needs."""
        done = [e for e in catalog.entries(self.run_dir) if e.complete]
        return done[-1].size_bytes if done else None
