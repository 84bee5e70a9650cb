"""What the loop changes as it trains, and how the controls change it; saved whole in every checkpoint.

- ``progress``: the position in the data, the eval history, the last losses;
- ``controls``: clipping, divergence guard, plateau, instability, early stopping;
- ``lr``: the learning-rate multiplier on top of the schedule;
- ``recovery``: what automatic recovery changed and spent;
- ``journal``: every adjustment made so far.

The loop calls :meth:`RunState.after_step` and :meth:`RunState.after_eval` at step boundaries,
where the controls decide from the loop's own numbers (deterministic: no thread is involved).
:meth:`RunState.saved` is the form a checkpoint holds; :meth:`RunState.adopt` takes one back.
A rollback adopts everything except what must outlive it: recovery's state, the journal and
the LR reductions rollbacks made.
"""

from __future__ import annotations

from typing import Any

from llmc_cli.checkpoints.state import TrainerState
from llmc_cli.engine.controls import Controls
from llmc_cli.engine.failure import Standing
from llmc_cli.engine.journal import Journal
from llmc_cli.engine.lr import LearningRate
from llmc_cli.engine.recovery import Budget, Recovery, RecoveryState
from llmc_cli.engine.session import Session
from llmc_cli.engine.summary import FitResult
from llmc_cli.events import EvalEnded, EventBus, StepEnded


class RunState:
    """The loop's changing state and the objects that change it, built for one session."""

    def __init__(self, session: Session, bus: EventBus) -> None:
        cfg = session.config
        run, training = cfg.run, cfg.training
        self.lr_factor = training.lr_plateau_factor  # what the plateau and instability controls lower by
        self.progress = TrainerState()
        self.controls = Controls.from_config(cfg)
        self.lr = LearningRate(session.optimizer, session.scheduler, floor=training.min_lr_ratio)
        self.journal = Journal(bus)
        budget = Budget(
            run.auto_recovery, run.max_oom_retries, run.max_rollbacks, run.nan_tolerance, run.max_skipped_batches
        )
        self.recovery = Recovery(budget, self.journal, training.batch_size, training.grad_accum, training.micro_batch)

    @property
    def step(self) -> int:
        return self.progress.position.step

    def after_step(self, step: int, loss: float, grad_norm: float) -> None:
        """At a step boundary: the instability control decides on the step's own loss and gradient norm."""
        found = self.controls.instability.observe(step, loss, grad_norm)
        if found is not None:
            code, evidence = found
            why = "The loss oscillates without decreasing" if code == "lr_too_high" else "A gradient norm exploded"
            self._lower_lr(step, "instability", f"{why} ({', '.join(f'{k} {v:.3g}' for k, v in evidence.items())}).")

    def after_eval(self, step: int, loss: float) -> bool:
        """After a scheduled evaluation: the plateau control decides; True when early stopping ends the run."""
        controls = self.controls
        if controls.plateau.observe(loss):
            self._lower_lr(step, "plateau", f"Eval loss has not improved for {controls.plateau.patience} evaluations.")
        if controls.early.observe(step, loss):
            self.journal.record(step, "early-stopping", "stopped", controls.early.reason())
            return True
        return False

    def _lower_lr(self, step: int, cause: str, why: str) -> None:
        lr = self.lr
        factor = lr.lower(cause, self.lr_factor)
        if factor != 1.0:
            message = f"{why} Learning rate x{factor:g} (now x{lr.multiplier:g} of the schedule)."
            self.journal.record(step, cause, "lowered-lr", message, {"lr": lr.current, "lr_multiplier": lr.multiplier})

    def saved(self) -> TrainerState:
        """A copy of the whole state, as a checkpoint holds it."""
        saved = TrainerState.from_json(self.progress.to_json())
        saved.controls = self.controls.state_dict()
        saved.lr = self.lr.state_dict()
        saved.recovery = self.recovery.state.to_json()
        saved.journal = list(self.journal.entries)
        return saved

    def result(
        self,
        *,
        steps_per_epoch: int,
        eval_time_s: float,
        checkpoint_time_s: float,
        final_eval_loss: float | None,
        best_eval_loss: float | None,
        stopped_early: bool,
        restored_best_step: int | None,
        samples: dict[str, Any] | None = None,
    ) -> FitResult:
        """What the run measured, from this state and the loop's own timings."""
        progress = self.progress
        return FitResult(
            steps=self.step,
            epochs=self.step / steps_per_epoch,
            train_time_s=progress.position.train_time_s,
            eval_time_s=eval_time_s,
            checkpoint_time_s=checkpoint_time_s,
            tokens=progress.position.tokens,
            initial_eval_loss=progress.initial_eval_loss,
            final_eval_loss=final_eval_loss,
            best_eval_loss=best_eval_loss,
            final_train_loss=progress.last_train_loss,
            stopped_early=stopped_early,
            restored_best_step=restored_best_step,
            samples=samples,
            lr_multiplier=self.lr.multiplier,
            recovery=self.recovery.state.to_json(),
            adjustments=list(self.journal.entries),
        )

    def standing(self, last_logged: StepEnded | None, last_eval: EvalEnded | None) -> Standing:
        """Where the run stands: the session's last log line and evaluation, else what the
        checkpoint it resumed from recorded; and every adjustment so far."""
        progress = self.progress
        train = last_logged.to_dict() if last_logged else None
        if train is None and progress.last_train_loss is not None:
            train = {"loss": progress.last_train_loss}
        evaluation = last_eval.to_dict() if last_eval else None
        if evaluation is None and progress.eval_history:
            evaluation = {"eval_loss": progress.eval_history[-1][1]}
        return Standing(self.step, train, evaluation, list(self.journal.entries))

    def adopt(self, saved: TrainerState, rollback: bool = False) -> None:
        """Continue from ``saved`` (a resume), or go back to it (``rollback``: recovery's state, the
        journal and the rollbacks' LR reductions stay as they are now)."""
        self.progress = TrainerState.from_json(saved.to_json())
        self.controls.load_state_dict(saved.controls)
        self.lr.load_state_dict(saved.lr, keep=("rollback",) if rollback else ())
        if not rollback:
            self.recovery.state = RecoveryState.from_json(saved.recovery)
            self.journal.entries = list(saved.journal)
