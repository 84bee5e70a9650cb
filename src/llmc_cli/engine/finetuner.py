"""The public engine API: ``FineTuner(data_path, model="auto", preset="quality").train()``."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

from llmc_cli.engine.events import EventBus, RunEnded, RunResumed, Subscriber, TrainingWarning
from llmc_cli.engine.failure import write_failure_report
from llmc_cli.engine.interrupt import StopRequest
from llmc_cli.engine.plan import RunPlan, plan_run, user_layers
from llmc_cli.engine.resume import ResumeTarget, find_target, plan_resume
from llmc_cli.engine.rundir import create_run_dir, write_json
from llmc_cli.errors import LlmcError, RunInterrupted, UnexpectedFailure


class FineTuner:
    """Fine-tune a causal LM with LoRA and write a run directory.

    Args:
        data_path: Training data (.jsonl, .json, .csv, .parquet).
        model: Local folder, hub id, family alias or "auto" (default when None).
        preset: "highspeed", "quality" (default when None) or "bestaccuracy".
        config_file: An ``llmc.toml`` to layer under the arguments.
        env_file: A ``.env`` file to read (None to skip).
        demo: Use the bundled demo data and a locally built model.
        **overrides: Any config key (``lr=1e-4``, ``max_steps=30``, ``lora_r=8`` ...).

    Example:
        >>> run_dir = FineTuner("data.jsonl", model="./tiny-llama", preset="highspeed", max_steps=30).train()
    """

    def __init__(
        self,
        data_path: str | Path | None = None,
        model: str | None = None,
        preset: str | None = None,
        *,
        config_file: str | Path | None = None,
        env_file: str | Path | None = ".env",
        demo: bool = False,
        **overrides: Any,
    ) -> None:
        flags = {"data": data_path, "model": model, "preset": preset, **overrides}
        self._layers = user_layers(
            flags,
            config_file=Path(config_file) if config_file is not None else None,
            env_file=Path(env_file) if env_file is not None else None,
            demo=demo,
        )
        self._subscribers: list[Subscriber] = []
        self._plan: RunPlan | None = None
        self._resume: ResumeTarget | None = None

    @classmethod
    def resume(cls, run: str | Path, checkpoint: str = "latest", output: str | Path = "runs") -> FineTuner:
        """Continue a run from a checkpoint, with the run's own config.

        Args:
            run: ``run-42``, ``42``, a run name under ``output``, or a run directory.
            checkpoint: ``latest``, ``best``, ``step-N`` or a checkpoint directory. One that
                fails verification is refused and the newest older valid one is used.
            output: Where runs given by name live.

        Raises:
            CheckpointError: no run, no checkpoint, or none that verifies.
        """
        tuner = cls.__new__(cls)
        tuner._layers, tuner._subscribers = [], []
        tuner._resume = find_target(run, checkpoint, Path(output))
        tuner._plan = plan_resume(tuner._resume)
        return tuner

    @property
    def resume_target(self) -> ResumeTarget | None:
        """The run and checkpoint a resumed tuner continues from (None for a new run)."""
        return self._resume

    def subscribe(self, subscriber: Subscriber) -> FineTuner:
        """Receive every event of the run (called from the event thread)."""
        self._subscribers.append(subscriber)
        return self

    def plan(self) -> RunPlan:
        """Resolve config, validate data and locate the model, without loading weights."""
        if self._plan is None:
            self._plan = plan_run(self._layers)
        return self._plan

    def train(self) -> Path:
        """Run training to the end and return the run directory.

        Raises:
            LlmcError: bad config, data or model; RunInterrupted after SIGINT/SIGTERM
                (a checkpoint is saved; ``FineTuner.resume(run_dir)`` continues).
        """
        from llmc_cli.engine.loop import Trainer
        from llmc_cli.monitor.reporters import check_installed

        plan = self.plan()
        config = plan.resolved.config
        check_installed(config.run.report_to)  # before a run directory exists
        if self._resume is None:
            run_dir = create_run_dir(config.run.output, config.run.run_name)
            write_json(run_dir / "config.json", plan.resolved.to_json())
        else:
            run_dir = self._resume.run_dir
        bus = EventBus()
        sinks = _attach_consumers(bus, run_dir, config)
        for subscriber in self._subscribers:
            bus.subscribe(subscriber)
        started = time.perf_counter()
        status, facts, result, adapter_dir, error, report = "failed", {}, None, None, None, None
        try:
            with bus, StopRequest() as stop, _system_sampling(bus, config.run.enable_monitoring):
                trainer = Trainer(plan, run_dir, bus, stop)
                try:
                    trainer.setup()
                    facts = trainer.describe()
                    bus.emit(trainer.started_event())
                    resume = None
                    if self._resume is not None:
                        resume = trainer.restore(self._resume.checkpoint)
                        refused = [f"{v.path.name}: {v.reason()}" for v in self._resume.refused]
                        for line in refused:
                            bus.emit(TrainingWarning("checkpoint", f"Refused checkpoint {line}"))
                        bus.emit(RunResumed(resume.state.position.step, str(resume.checkpoint), refused))
                    result = trainer.fit(resume)
                    adapter_dir = trainer.save_adapter(run_dir / "final")
                    if config.run.merge:
                        facts["merged_dir"] = str(trainer.merge(adapter_dir, run_dir / "merged"))
                    status = "completed"
                except BaseException as exc:
                    error = exc
                    status = "interrupted" if isinstance(exc, RunInterrupted) else "failed"
                    if status == "failed" and isinstance(exc, Exception):
                        try:
                            saved = trainer.save_failure_state(exc)
                        except Exception:  # the report matters more than this save
                            saved = None
                        bus.flush()  # the report reads the run's record up to this moment
                        report = write_failure_report(run_dir, exc, saved)
                        if not isinstance(exc, LlmcError):
                            error = UnexpectedFailure(
                                f"Training stopped on an error llmc has no recovery for: {type(exc).__name__}: {exc}. "
                                f"State saved as {saved or 'no checkpoint'}.",
                                hint=f"Read {report}, then continue with `llmc resume {run_dir}`; "
                                "run with LLMC_DEBUG=1 to see the traceback.",
                            )
                        error.report = report
                        if error is not exc:
                            raise error from exc
                    raise
                finally:
                    summary = _summary(status, run_dir, adapter_dir, facts, result, started, error)
                    if report is not None:
                        summary["failure_report"] = str(report)
                    write_json(run_dir / "summary.json", summary)
                    bus.emit(RunEnded(status, str(run_dir), str(adapter_dir) if adapter_dir else None, summary))
        finally:
            for sink in sinks:
                sink.close()
        return run_dir


def _attach_consumers(bus: EventBus, run_dir: Path, config) -> list:
    """Subscribe the run's record keepers and monitors; returns those that need closing."""
    from llmc_cli.monitor import reporters
    from llmc_cli.monitor.sinks import JsonlRecorder

    sinks: list = [JsonlRecorder(run_dir)]
    sinks += reporters.create(config.run.report_to, run_dir, config.flat())
    for sink in sinks:
        bus.subscribe(sink)
    if config.run.enable_monitoring:
        from llmc_cli.monitor.detectors import IssueMonitor

        bus.subscribe(IssueMonitor(bus))
    return sinks


def _system_sampling(bus: EventBus, enabled: bool):
    from contextlib import nullcontext

    from llmc_cli.monitor.system import SystemSampler

    return SystemSampler(bus) if enabled else nullcontext()


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _summary(status, run_dir, adapter_dir, facts, result, started, error) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "status": status,
        "run_dir": str(run_dir),
        "adapter_dir": str(adapter_dir) if adapter_dir else None,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        **facts,
    }
    if result is not None:
        summary.update(
            steps=result.steps,
            epochs=round(result.epochs, 4),
            train_time_s=round(result.train_time_s, 3),
            eval_time_s=round(result.eval_time_s, 3),
            tokens=result.tokens,
            tokens_per_s=round(result.tokens / max(result.train_time_s, 1e-9), 1),
            initial_eval_loss=result.initial_eval_loss,
            final_eval_loss=result.final_eval_loss,
            best_eval_loss=result.best_eval_loss,
            final_train_loss=result.final_train_loss,
            checkpoint_time_s=round(result.checkpoint_time_s, 3),
            stopped_early=result.stopped_early,
            restored_best_step=result.restored_best_step,
            recovery=result.recovery,
        )
    if error is not None:
        summary["error"] = str(error) or type(error).__name__
    return summary
