"""Event consumers that write the run's record: ``metrics.jsonl`` and ``events.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from llmc_cli.engine.events import EvalEnded, Event, StepEnded


class JsonlRecorder:
    """Appends metrics (steps and evals) to metrics.jsonl and every event to events.jsonl.

    Lines are flushed as written, so a killed run keeps everything logged until then.
    """

    def __init__(self, run_dir: Path) -> None:
        self._metrics = (run_dir / "metrics.jsonl").open("a", encoding="utf-8", buffering=1)
        self._events = (run_dir / "events.jsonl").open("a", encoding="utf-8", buffering=1)

    def __call__(self, event: Event) -> None:
        record = event.to_dict()
        self._events.write(json.dumps(record, default=str) + "\n")
        if isinstance(event, StepEnded | EvalEnded):
            kind = "train" if isinstance(event, StepEnded) else "eval"
            self._metrics.write(json.dumps({"type": kind, **record}, default=str) + "\n")

    def close(self) -> None:
        self._metrics.close()
        self._events.close()
