"""One training run, start to end: the engine's entry point.

:func:`train` opens the session, continues from a checkpoint when resuming, runs the loop,
saves the adapter (and merged weights), and always leaves ``summary.json`` and the run's
record behind; a failure also leaves a resumable checkpoint and a failure report. The caller
creates the run directory and the event bus and attaches what watches the run (a dashboard,
trackers, a tuner's pruning reporter); the engine attaches only the run's own record.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmc_cli.checkpoints import catalog
from llmc_cli.durable import disk_error, disk_full, write_json
from llmc_cli.engine import export
from llmc_cli.engine.failure import Standing, write_failure_report
from llmc_cli.engine.interrupt import StopRequest
from llmc_cli.engine.plan import RunPlan
from llmc_cli.engine.record import JsonlRecorder
from llmc_cli.engine.recovery import free_memory
from llmc_cli.engine.resume import ResumeTarget
from llmc_cli.engine.summary import FitResult, build_summary
from llmc_cli.errors import DiskFull, LlmcError, RunInterrupted, UnexpectedFailure
from llmc_cli.events import EventBus, RunEnded, RunResumed, TrainingWarning
from llmc_cli.faults import NO_FAULTS, Faults
from llmc_cli.models.optional import skip_unused_bitsandbytes
from llmc_cli.optimize import throughput


@dataclass
class _Outcome:
    status: str = "failed"
    facts: dict[str, Any] | None = None
    result: FitResult | None = None
    adapter_dir: Path | None = None
    loop: Any = None  # the Loop, once training has started


def train(
    plan: RunPlan,
    run_dir: Path,
    bus: EventBus,
    *,
    resume: ResumeTarget | None = None,
    faults: Faults = NO_FAULTS,
    stop: StopRequest | None = None,
) -> Path:
    """Train as ``plan`` says into ``run_dir``, emitting events on ``bus``; returns ``run_dir``.

    ``stop`` lets the caller end the run at the next step boundary (a tuner pruning a trial:
    ``stop.request("pruned")`` from a subscriber); SIGINT and SIGTERM request it too.

    Raises:
        LlmcError: a failure with its exit code (``failure.txt`` written, state saved);
            RunInterrupted after SIGINT/SIGTERM (a checkpoint saved; ``llmc resume`` continues).
    """
    started = time.perf_counter()
    skip_unused_bitsandbytes(plan.resolved.config.model.quantize)  # a resume does not pass fit_to_machine
    record = JsonlRecorder(run_dir)
    bus.subscribe(record)
    bus.start()
    outcome = _Outcome()
    error: BaseException | None = None
    try:
        with stop or StopRequest() as requested:
            _run(plan, run_dir, bus, requested, resume, faults, outcome)
    except BaseException as exc:
        error = exc
        if isinstance(exc, RunInterrupted):
            outcome.status = "interrupted"
        elif isinstance(exc, Exception):  # (a second Ctrl-C goes straight out)
            error = _report_failure(run_dir, exc, outcome.loop, faults)
            if error is not exc:
                raise error from exc
        raise
    finally:
        summary = build_summary(
            outcome.status, run_dir, time.perf_counter() - started, outcome.facts or {}, outcome.result,
            outcome.adapter_dir, error,
        )  # fmt: skip
        bus.emit(RunEnded(outcome.status, str(run_dir), summary["adapter_dir"], summary))
        bus.flush()
        bus.unsubscribe(record)
        record.close()
        if record.lost:
            summary["records_lost"] = record.lost
        _write_summary(run_dir, summary)
    return run_dir


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """``summary.json``, or a line on stderr when the disk cannot take it (the run's outcome stands)."""
    try:
        write_json(run_dir / "summary.json", summary)
    except OSError as exc:
        if not disk_error(exc):
            raise
        print(f"llmc: could not write {run_dir / 'summary.json'} ({exc.strerror}).", file=sys.stderr)


def _run(plan, run_dir, bus, stop, resume, faults, outcome: _Outcome) -> None:
    from llmc_cli.engine.loop import Loop
    from llmc_cli.engine.session import open_session
    from llmc_cli.engine.snapshot import load_checkpoint

    config = plan.resolved.config
    session = open_session(plan, run_dir, bus, should_stop=lambda: stop.requested)
    outcome.facts = session.describe()
    if resume is None:
        for warning in plan.warnings:
            bus.emit(TrainingWarning("memory", warning))
    if config.model.optimize_memory:
        free_memory()  # what loading and tokenising left behind
    bus.emit(session.started_event())
    outcome.loop = loop = Loop(session, bus, stop, faults)
    restored = None
    if resume is not None:
        restored = load_checkpoint(session, resume.checkpoint)
        refused = [f"{v.path.name}: {v.reason()}" for v in resume.refused]
        for line in refused:
            bus.emit(TrainingWarning("checkpoint", f"Refused checkpoint {line}"))
        bus.emit(RunResumed(restored.state.position.step, str(resume.checkpoint), refused))
    outcome.result = loop.fit(restored)
    peak = throughput.run_peak(session.model, session.precision, session.accelerator.device.type,
                               outcome.result.train_time_s)  # fmt: skip
    if peak is not None:
        outcome.facts["matmul_peak_flops_per_s"] = round(peak)
    if config.model.optimize_memory:
        free_memory()  # training's buffers, before export (and a second copy of the model to merge)
    faults.fill_disk("final", run_dir)
    outcome.adapter_dir = export.save_adapter(session, run_dir / "final")
    if config.run.merge:
        faults.fill_disk("merge", run_dir)
        outcome.facts["merged_dir"] = str(export.merge(session, outcome.adapter_dir, run_dir / "merged"))
    outcome.status = "completed"


def _report_failure(run_dir: Path, exc: Exception, loop, faults: Faults) -> LlmcError:
    """Keep a resumable state, write the failure report, and return the error to raise."""
    try:
        saved = loop.save_for_failure(exc) if loop is not None else None
    except Exception:  # the report matters more than this save
        saved = None
    kept = saved or catalog.valid_before(run_dir)[0]  # what `llmc resume` continues from
    error = exc
    if not isinstance(exc, LlmcError) and disk_error(exc):
        error = disk_full(exc, "the run's files", run_dir)
    faults.fill_disk("report", run_dir)
    report = write_failure_report(run_dir, error, loop.standing() if loop is not None else Standing(), kept)
    where = report or "the failure report printed above"
    state = f"State saved as {saved}." if saved else f"Newest checkpoint: {kept}." if kept else "No checkpoint yet."
    if isinstance(error, DiskFull):
        error.message += f" {state}"
    elif not isinstance(error, LlmcError):
        error = UnexpectedFailure(
            f"Training stopped on an error llmc has no recovery for: {type(exc).__name__}: {exc}. {state}",
            hint=f"Read {where}, then continue with `llmc resume {run_dir}`; "
            "run with LLMC_DEBUG=1 to see the traceback.",
        )
    error.report = report
    return error
