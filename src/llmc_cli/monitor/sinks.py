"""Event consumers that write the run's record: ``metrics.jsonl`` and ``events.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from llmc_cli.engine.events import EvalEnded, Event, RolledBack, RunResumed, StepEnded

# A rollback voids the steps after it exactly as a resume does.
METRIC_KINDS = {StepEnded: "train", EvalEnded: "eval", RunResumed: "resume", RolledBack: "resume"}


class JsonlRecorder:
    """Appends metrics (steps and evals) to metrics.jsonl and every event to events.jsonl.

    Lines are flushed as written, so a killed run keeps everything logged until then. A
    resumed run appends a ``{"type": "resume", "step": N}`` line: records of steps after N
    written before it belong to the abandoned attempt, and readers take the later ones.
    """

    def __init__(self, run_dir: Path) -> None:
        self._metrics = _append(run_dir / "metrics.jsonl")
        self._events = _append(run_dir / "events.jsonl")

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
