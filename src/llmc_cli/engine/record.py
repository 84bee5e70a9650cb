"""The run's record: ``metrics.jsonl`` and ``events.jsonl``, written as events arrive and read back.

The engine keeps this record for every run (the run directory's contract, like ``config.json``
and ``summary.json``); trackers and displays are attached by the caller. A run that was killed
and resumed, or rolled back, logged some steps twice: the attempt that was abandoned logged steps
after the state it went back to, and the later attempt logged them again after a
``{"type": "resume", "step": N}`` line. The records that count are the later ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmc_cli.durable import read_jsonl
from llmc_cli.events import EvalEnded, Event, RolledBack, RunResumed, StepEnded

METRICS, EVENTS = "metrics.jsonl", "events.jsonl"
# A rollback voids the steps after it exactly as a resume does.
METRIC_KINDS = {StepEnded: "train", EvalEnded: "eval", RunResumed: "resume", RolledBack: "resume"}


class JsonlRecorder:
    """Appends metrics (steps and evals) to metrics.jsonl and every event to events.jsonl.

    Lines are flushed as written, so a killed run keeps everything logged until then.
    """

    def __init__(self, run_dir: Path) -> None:
        self._metrics = _append(run_dir / METRICS)
        self._events = _append(run_dir / EVENTS)

    def __call__(self, event: Event) -> None:
        record = event.to_dict()
        self._events.write(json.dumps(record, default=str) + "\n")
        kind = METRIC_KINDS.get(type(event))
        if kind is not None:
            self._metrics.write(json.dumps({"type": kind, **record}, default=str) + "\n")

    def close(self) -> None:
        self._metrics.close()
        self._events.close()


def _append(path: Path):
    """Open for appending, starting on a fresh line if a killed writer left half of one."""
    torn = False
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as handle:
            handle.seek(-1, 2)
            torn = handle.read(1) != b"\n"
    handle = path.open("a", encoding="utf-8", buffering=1)
    if torn:
        handle.write("\n")
    return handle


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``metrics.jsonl`` in order; a torn last line (a killed writer) is skipped."""
    return read_jsonl(run_dir / METRICS)


def by_step(run_dir: Path, kind: str = "train") -> dict[int, dict[str, Any]]:
    """The record of each step of ``kind`` ("train" or "eval") that the finished run stands on."""
    chosen: dict[int, dict[str, Any]] = {}
    for record in read_metrics(run_dir):
        if record.get("type") == "resume":
            chosen = {step: r for step, r in chosen.items() if step <= record["step"]}
        elif record.get("type") == kind:
            chosen[record["step"]] = record
    return dict(sorted(chosen.items()))
