"""The training loop: take an accumulation window, forward and backward, clip, step, schedule, emit.

One loop for one process or many (``accelerate launch`` / ``torchrun``): accelerate owns
devices, precision and gradient synchronisation. Every decision that changes training (skip
a step, roll back, lower the learning rate, stop early) is made here, at a step boundary,
from the loop's own numbers, and lives in the checkpoint (:class:`RunState`): a run is
reproducible and a resumed run is exact. Consumers learn about progress only through events.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from llmc_cli.checkpoints import catalog
from llmc_cli.checkpoints.state import capture_rng, restore_rng
from llmc_cli.engine.best import BestAdapter
from llmc_cli.engine.evaluate import Evaluator
from llmc_cli.engine.failure import Standing
from llmc_cli.engine.interrupt import StopRequest
from llmc_cli.engine.loss import target_count
from llmc_cli.engine.recovery import recoverable
from llmc_cli.engine.rollback import Rewind, RollbackNeeded
from llmc_cli.engine.samples import Sampler, pick_prompts
from llmc_cli.engine.session import Session
from llmc_cli.engine.snapshot import Checkpointer, Resume
from llmc_cli.engine.state import RunState
from llmc_cli.engine.steplog import StepDone, StepLog, update_ratio
from llmc_cli.engine.summary import FitResult
from llmc_cli.errors import DivergenceError, RunInterrupted
from llmc_cli.events import EventBus, StepEnded, TrainingWarning
from llmc_cli.faults import NO_FAULTS, Faults


class Loop:
    """Trains one session to its planned number of optimizer steps."""

    def __init__(self, session: Session, bus: EventBus, stop: StopRequest, faults: Faults = NO_FAULTS) -> None:
        self.s, self.bus, self.stop, self.faults = session, bus, stop, faults
        self.state = RunState(session, bus)
        self.evaluate = Evaluator(session, self.state.recovery, bus, faults)
        prompts = pick_prompts(session.rows.val, session.tokenizer, session.config.training.samples)
        self.sampler = Sampler(session, bus, prompts)
        self.rewind = Rewind(session, self.state, bus)
        self.best = BestAdapter()
        self.checkpoints = Checkpointer(session, bus, faults, self.best)
        self.stopped_early = False
        self.last_logged: StepEnded | None = None
        self._rng: dict[str, Any] | None = None  # to put back when the next epoch's iterator is made
        self._log = StepLog()

    def fit(self, resume: Resume | None = None) -> FitResult:
        """Train from the start or from ``resume``: evaluate at step 0 (fresh runs), on schedule and
        at the end; checkpoint on the interval, at each epoch end and when a stop is requested."""
        if resume is not None:
            self.state.adopt(resume.state)
            self.sampler.resumed(self.s.run_dir)
            self.best.load(resume.checkpoint)
            self._continue_from(resume)
            if self.state.recovery.state.gradient_checkpointing and not self.s.gradient_checkpointing:
                self.s.enable_gradient_checkpointing()
        else:
            self.state.progress.initial_eval_loss = self._evaluate(0)
            self.state.controls.guard.set_start_eval(self.state.progress.initial_eval_loss)
        self.s.model.train()
        if self._rng is None:  # a fresh run: the RNG the first epoch starts from
            self._rng = capture_rng()
        self.rewind.mark_origin(self._rng)
        while self.state.step < self.s.total_steps and not self.stop.requested and not self.stopped_early:
            try:
                self._epoch()
            except RollbackNeeded as need:
                self._continue_from(self.rewind.roll_back(need))
        self.state.progress.position.tokens += self._log.tokens  # steps not logged yet
        self._log = StepLog()
        if self.stop.requested:
            self._interrupted()
        return self._finish()

    def _epoch(self) -> None:
        """Train from the current position to the end of its epoch, the plan, or a stop."""
        pos = self.state.progress.position
        loader = self.s.train_loader
        loader.set_epoch(pos.epoch)
        tick = time.perf_counter()  # training time: steps, data and logging; not eval or saving
        if pos.batches_in_epoch:
            loader = self.s.accelerator.skip_first_batches(loader, pos.batches_in_epoch)
        # RNG goes back to the saved state at the moment the uninterrupted run saved it:
        # before a new epoch's iterator is made, or after the resumed one's.
        if pos.batches_in_epoch == 0:
            self._restore_rng()
        batches = iter(loader)
        self._restore_rng()
        for window in _windows(batches, self.s.config.training.grad_accum):
            done = self._step(window)
            pos.step += 1
            pos.batches_in_epoch += len(window)
            last = pos.step == self.s.total_steps
            self._record(window, done, last)
            pos.train_time_s += time.perf_counter() - tick
            self._at_boundary(done, last)
            tick = self._log.started = time.perf_counter()
            if last or self.stop.requested or self.stopped_early:
                return
        pos.epoch += 1
        pos.batches_in_epoch = 0
        self._checkpoint("epoch")

    def _step(self, window: list[dict[str, Any]]) -> StepDone | None:
        """One optimizer step over ``window``, retried after out-of-memory; None when it was skipped
        (an unusable batch, or a bad loss recovery chose to skip: its data consumed, weights untouched)."""
        step = self.state.step + 1
        recovery = self.state.recovery
        while True:
            try:
                return self._train_step(window, step)
            except Exception as exc:  # noqa: BLE001 - re-raised unless recovery can act
                kind = recoverable(exc)
                if kind is None:
                    raise
                error = f"{type(exc).__name__}: {exc}"
            # Outside the except block: the exception (and the activations its frames hold) is gone.
            self.s.optimizer.zero_grad(set_to_none=True)
            if kind == "data":
                recovery.on_data_error(step, error, self.s.gradient_checkpointing)
                self.state.lr.step()  # a skipped step keeps its place in the schedule
                return None
            rows = window[0]["input_ids"].shape[0]
            plan = recovery.on_oom(step, kind, error, rows, self.s.gradient_checkpointing, evaluating=False)
            if plan.gradient_checkpointing and not self.s.gradient_checkpointing:
                self.s.enable_gradient_checkpointing()

    def _train_step(self, window: list[dict[str, Any]], step: int) -> StepDone | None:
        """Forward and backward over the window, check the loss, then clip and update (or skip)."""
        s, acc, controls, faults = self.s, self.s.accelerator, self.state.controls, self.faults
        targets = sum(target_count(batch) for batch in window)
        # Every process divides by the global target count; DDP then averages, hence the factor.
        multi = acc.num_processes > 1
        global_targets = acc.reduce(targets.clone(), "sum") if multi else targets
        scale = acc.num_processes / global_targets.clamp(min=1)
        micro = [part for batch in window for part in self.state.recovery.cut(batch)]
        factor = faults.loss_factor(step)
        loss_sum = torch.zeros((), device=acc.device)
        for index, batch in enumerate(micro):
            last = index == len(micro) - 1
            if last:
                faults.in_step(step)
            with nullcontext() if last else acc.no_sync(s.model):
                loss = s.loss(s.model, batch)
                if factor != 1.0:
                    loss = loss * factor
                acc.backward(loss * scale)
            loss_sum += loss.detach()
            # Dropped before the next micro-batch's forward: after backward its graph still holds
            # tensors, and kept alive it raised a 2-micro-batch step's peak RSS by ~600 MB (mini, 8 x 512).
            del loss
        if (grad_factor := faults.gradient_factor(step)) != 1.0:
            torch._foreach_mul_([p.grad for p in s.params if p.grad is not None], grad_factor)
        threshold = controls.clipper.threshold()
        grad_norm = acc.clip_grad_norm_(s.params, threshold)
        total = acc.reduce(loss_sum.clone(), "sum") if multi else loss_sum
        # The one host sync per step: every process sees the same loss and norm, so all decide alike.
        mean_loss, norm = torch.stack([total / global_targets.clamp(min=1), grad_norm.float()]).tolist()
        verdict = controls.guard.check(mean_loss, norm)
        if verdict is not None:
            s.optimizer.zero_grad(set_to_none=True)
            if self.state.recovery.on_bad_step(step, verdict, mean_loss, s.gradient_checkpointing) == "rollback":
                raise RollbackNeeded(step, verdict, mean_loss)
            self.state.lr.step()  # a skipped step keeps its place in the schedule
            return None
        self.state.recovery.on_good_step()
        controls.guard.record(mean_loss, norm)
        controls.clipper.record(norm)
        before = torch._foreach_mul([p.detach() for p in s.params], 1.0)  # copies of the trainable weights
        s.optimizer.step()
        ratio = update_ratio(s.params, before)
        self.state.lr.step()
        s.optimizer.zero_grad(set_to_none=True)
        return StepDone(loss_sum, targets, mean_loss, norm, threshold, ratio)

    def _record(self, window: list[dict[str, Any]], done: StepDone | None, last: bool) -> None:
        """Add the step to the log interval, and emit the interval's line when it is due."""
        progress, log = self.state.progress, self._log
        if done is not None:
            log.add(window, done)
        step = progress.position.step
        if log.last is None or not (step % self.s.config.training.log_every == 0 or last):
            return
        elapsed = progress.position.train_time_s  # training time before this step
        event = log.event(step, self.s.total_steps, self.s.steps_per_epoch, self.state.lr.current, elapsed)
        self.bus.emit(event)
        self.last_logged, progress.last_train_loss = event, event.loss
        progress.position.tokens += log.tokens
        self._log = StepLog()

    def _at_boundary(self, done: StepDone | None, last: bool) -> None:
        """The controls decide (on this step, then on a scheduled evaluation); checkpoints are saved."""
        step = self.state.step
        self.faults.at_boundary(step, self.s.run_dir)
        if done is not None:
            self.state.after_step(step, done.loss, done.grad_norm)
        if step % self.s.eval_every == 0 and not last:
            self._evaluate(step)
            if self.state.controls.early.enabled and self.state.controls.early.best_step == step:
                self._checkpoint("best")
        if self.sampler.due(step, False, self.state.progress.position.train_time_s):
            self.sampler(step)
        if self.checkpoints.due(step):
            self._checkpoint("interval")

    def _evaluate(self, step: int, decide: bool = True) -> float | None:
        """Evaluate and record; an eval far above the step-0 one rolls back, else the plateau and
        early-stopping controls decide on the result."""
        loss = self.evaluate(step)
        if self.sampler.due(step, True, self.state.progress.position.train_time_s, final=not decide):
            self.sampler(step)
        if loss is None:
            return None
        state = self.state
        if decide and step > 0 and state.controls.guard.eval_diverged(loss):
            checkpointing = self.s.gradient_checkpointing
            if state.recovery.on_bad_step(step, "eval-diverged", loss, checkpointing) == "rollback":
                raise RollbackNeeded(step, "eval-diverged", loss)
        state.progress.eval_history.append((step, loss))
        self.best.note(step, loss, self.s.unwrapped())
        if decide and step > 0 and state.after_eval(step, loss):
            self.stopped_early = True
        return loss

    def _continue_from(self, resume: Resume) -> None:
        """Go on from an adopted state: a resume's checkpoint, or a rollback's target."""
        if resume.checkpoint is not None:
            self.checkpoints.saved_already(resume.state.position.step)
        self._rng = resume.rng
        self._log = StepLog()

    def _restore_rng(self) -> None:
        if self._rng is not None:
            restore_rng(self._rng)
            self._rng = None

    def _checkpoint(self, reason: str) -> Path | None:
        return self.checkpoints.save(self.state.saved(), reason)

    def _interrupted(self) -> None:
        step, stop = self.state.step, self.stop
        self.bus.emit(TrainingWarning("interrupted", f"{stop.reason}: stopped after step {step}"))
        saved = self._checkpoint("interrupt")
        if saved is not None:
            where, hint = f"state saved as checkpoint {saved}", "Continue exactly where it stopped with"
        else:
            older = catalog.valid_before(self.s.run_dir)[0]
            where = "saving the state failed (see the warning); " + (
                f"the newest checkpoint is {older}" if older else "no checkpoint exists yet"
            )
            hint = "Continue from the newest checkpoint with"
        raise RunInterrupted(
            f"Training stopped by {stop.reason} after step {step} of {self.s.total_steps}; {where}.",
            hint=f"{hint}: llmc resume {self.s.run_dir}",
        )

    def standing(self) -> Standing:
        """Where the run stands, for a failure report."""
        return self.state.standing(self.last_logged, self.evaluate.last)

    def save_for_failure(self, error: BaseException) -> Path | None:
        """After a failure, keep a resumable checkpoint: the last good state for a divergence, else the current one."""
        return self.rewind.keep_for_failure(isinstance(error, DivergenceError), lambda: self._checkpoint("failure"))

    def _finish(self) -> FitResult:
        """Evaluate the last adapter, put the best one back when the last is clearly worse (or early
        stopping ended the run), and refuse to call a run that diverged and never beat the base done."""
        state, best = self.state, self.best
        history = state.progress.eval_history
        final = history[-1][1] if history and history[-1][0] == state.step else None
        if final is None and not self.stopped_early:
            final = self._evaluate(state.step, decide=False)
        restored = None
        early = state.controls.early
        if self.stopped_early and early.best_step not in (None, state.step, best.step):
            checkpoint = self.s.run_dir / catalog.CHECKPOINTS / catalog.checkpoint_name(early.best_step)
            if not best.take_checkpoint(checkpoint, early.best_step, early.best):
                message = f"The adapter of step {early.best_step} was not saved; keeping the best in memory."
                self.bus.emit(TrainingWarning("early-stopping", message))
        if best.step is not None and best.step != state.step and (self.stopped_early or best.beats(final)):
            restored = self._restore_best(final)
            final = best.loss
        # best.step == 0: no evaluation, the last one included, beat the base model.
        last = history[-1][1] if history else None  # None: no validation data, so no evaluation
        diverged = state.recovery.state.rollbacks > 0 or (last is not None and state.controls.guard.eval_diverged(last))
        if best.step == 0 and diverged:
            raise DivergenceError(
                f"Training diverged and no evaluation beat the base model (step-0 eval loss {best.loss:.4f}; "
                f"the last adapter's {last:.4f}), after {state.recovery.state.rollbacks} rollback(s) "
                "with a lower learning rate.",
                hint="Lower the learning rate 10x or more (--lr), then `llmc train` again.",
            )
        return state.result(
            steps_per_epoch=self.s.steps_per_epoch,
            eval_time_s=self.evaluate.time_s + self.sampler.time_s,
            checkpoint_time_s=self.checkpoints.time_s,
            final_eval_loss=final,
            best_eval_loss=best.loss if best.step is not None else None,  # also evals a rollback undid
            stopped_early=self.stopped_early,
            restored_best_step=restored,
            samples=self.sampler.summary(),
        )

    def _restore_best(self, final: float | None) -> int:
        """Put the best adapter back, and say why in the journal."""
        best, step = self.best, self.state.step
        best.put_back(self.s.unwrapped())
        if self.stopped_early:
            cause, why = "early-stopping", "Early stopping ended the run"
        else:
            cause, why = "best", f"The last adapter (eval loss {final:.4f} at step {step}) is worse than the best"
        where = "the start (no evaluation beat the base model)" if best.step == 0 else f"step {best.step}"
        self.state.journal.record(
            step,
            cause,
            "restored-best",
            f"{why}: the run's adapter is the best one, from {where} (eval loss {best.loss:.4f}).",
        )
        return best.step


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
