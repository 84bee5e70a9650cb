"""Going back to a good state: after a divergence (rollback), and at the end of an early-stopped run.

A rollback returns to the newest checkpoint of this session that verifies and was saved
before the failing step, or to the session's start (kept in host memory, since a fresh run
has no checkpoint yet), and halves the learning rate. What recovery learned, the journal and
earlier rollbacks' LR reductions outlive it (:meth:`RunState.adopt`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmc_cli.checkpoints import catalog
from llmc_cli.engine.recovery import DIVERGED, rollback_lr_factor
from llmc_cli.engine.session import Session
from llmc_cli.engine.snapshot import MemorySnapshot, Resume, load_checkpoint
from llmc_cli.engine.state import RunState
from llmc_cli.events import EventBus, RolledBack


class RollbackNeeded(Exception):  # noqa: N818 - control flow inside the loop, never seen outside
    def __init__(self, step: int, verdict: str, loss: float) -> None:
        super().__init__(f"roll back from step {step}")
        self.step, self.verdict, self.loss = step, verdict, loss


class Rewind:
    """Knows the session's start and the run's checkpoints; puts a good state back."""

    def __init__(self, session: Session, state: RunState, bus: EventBus) -> None:
        self.session = session
        self.state = state
        self.bus = bus
        self.origin: MemorySnapshot | None = None

    def mark_origin(self, rng: dict[str, Any]) -> None:
        """Keep the state the session starts from (and the RNG it starts with) in host memory."""
        s = self.session
        self.origin = MemorySnapshot.capture(s.params, s.optimizer, s.scheduler, self.state.saved(), rng)

    def roll_back(self, need: RollbackNeeded) -> Resume:
        """Restore the newest good state before ``need.step`` and lower the LR; returns what was restored."""
        target, refused = self.last_good(need.step, judged=need.verdict in DIVERGED)
        for line in refused:
            self.state.recovery.act_checkpoint(need.step, line)
        if target is None:
            resume, source = self._from_origin(), "start of this session"
        else:
            resume, source = load_checkpoint(self.session, target), str(target)
        self.state.adopt(resume.state, rollback=True)
        self.state.lr.lower("rollback", rollback_lr_factor(need.verdict))
        self.bus.emit(RolledBack(step=resume.state.position.step, from_step=need.step, source=source))
        self.state.recovery.rolled_back(
            need.step,
            need.verdict,
            need.loss,
            resume.state.position.step,
            source,
            self.session.gradient_checkpointing,
            self.state.lr.multiplier,
        )
        return resume

    def last_good(self, step: int, judged: bool = False) -> tuple[Path | None, list[str]]:
        """The newest verified checkpoint of this session before ``step`` (None: the start is newest),
        and the checkpoints refused on the way. ``judged``: also pass over checkpoints whose
        recorded losses show the run had already diverged from its start when they were saved."""
        since = self.origin.step if self.origin else 0
        accept = self._not_diverged if judged else None
        target, failures = catalog.valid_before(self.session.run_dir, step, since=since, accept=accept)
        return target, [f"{f.path.name}: {f.reason()}" for f in failures]

    def _not_diverged(self, entry: catalog.Entry) -> bool:
        guard, metrics = self.state.controls.guard, entry.metrics
        if "train_loss" in metrics and guard.far_from_start(metrics["train_loss"]):
            return False
        return not ("eval_loss" in metrics and guard.eval_diverged(metrics["eval_loss"]))

    def keep_for_failure(self, diverged: bool, save: Callable[[], Path | None]) -> Path | None:
        """The checkpoint a failed run continues from: for a divergence the last good one (or the
        session's start, saved now), else the current state saved by ``save``. None when training
        never started or nothing could be saved."""
        if self.origin is None:
            return None
        if diverged:
            target, _ = self.last_good(self.state.step + 1, judged=True)
            if target is not None:
                return target
            self.state.adopt(self._from_origin().state, rollback=True)
        try:
            return save()
        except Exception:  # the failure report matters more than this save
            return None

    def _from_origin(self) -> Resume:
        s = self.session
        return self.origin.restore(s.params, s.optimizer, s.scheduler)
