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
from llmc_cli.checkpoints.manifest import verify
from llmc_cli.checkpoints.state import ADAPTER_WEIGHTS
from llmc_cli.engine.recovery import ROLLBACK_LR_FACTOR
from llmc_cli.engine.session import Session
from llmc_cli.engine.snapshot import MemorySnapshot, Resume, load_checkpoint
from llmc_cli.engine.state import RunState
from llmc_cli.events import EventBus, RolledBack, TrainingWarning


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
        target, refused = self.last_good(need.step)
        for line in refused:
            self.state.recovery.act_checkpoint(need.step, line)
        if target is None:
            resume, source = self._from_origin(), "start of this session"
        else:
            resume, source = load_checkpoint(self.session, target), str(target)
        self.state.adopt(resume.state, rollback=True)
        self.state.lr.lower("rollback", ROLLBACK_LR_FACTOR)
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

    def last_good(self, step: int) -> tuple[Path | None, list[str]]:
        """The newest verified checkpoint of this session before ``step`` (None: the start is newest),
        and the checkpoints refused on the way."""
        since = self.origin.step if self.origin else 0
        target, failures = catalog.valid_before(self.session.run_dir, step, since=since)
        return target, [f"{f.path.name}: {f.reason()}" for f in failures]

    def keep_for_failure(self, diverged: bool, save: Callable[[], Path | None]) -> Path | None:
        """The checkpoint a failed run continues from: for a divergence the last good one (or the
        session's start, saved now), else the current state saved by ``save``. None when training
        never started or nothing could be saved."""
        if self.origin is None:
            return None
        if diverged:
            target, _ = self.last_good(self.state.step + 1)
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

    def restore_best(self, best_step: int, best_loss: float) -> bool:
        """Load the adapter of the checkpoint saved at ``best_step``; False when it is missing or damaged."""
        path = self.session.run_dir / catalog.CHECKPOINTS / catalog.checkpoint_name(best_step)
        if not path.is_dir() or not verify(path).ok:
            self.bus.emit(
                TrainingWarning(
                    "early-stopping", f"The best adapter (step {best_step}) was not saved; keeping the last one."
                )
            )
            return False
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.session.unwrapped(), load_file(path / ADAPTER_WEIGHTS))
        self.state.journal.record(
            self.state.step,
            "early-stopping",
            "restored-best",
            f"Restored the best adapter, from step {best_step} (eval loss {best_loss:.4f}).",
        )
        return True
