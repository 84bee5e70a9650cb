"""The run's record: ``metrics.jsonl`` and ``events.jsonl``, written as events arrive and read back.

The engine keeps this record for every run (the run directory's contract, like ``config.json``
and ``summary.json``); trackers and displays are attached by the caller. A run that was killed
and resumed, or rolled back, logged some steps twice: the attempt that was abandoned logged steps
after the state it went back to, and the later attempt logged them again after a
``{"type": "resume", "step": N}`` line. The records that count are the later ones.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from llmc_cli.durable import disk_error, read_jsonl
from llmc_cli.events import EvalEnded, Event, RolledBack, RunResumed, SamplesGenerated, StepEnded

METRICS, EVENTS, SAMPLES = "metrics.jsonl", "events.jsonl", "samples.jsonl"
# A rollback voids the steps after it exactly as a resume does.
METRIC_KINDS = {
    StepEnded: "train",
    EvalEnded: "eval",
    RunResumed: "resume",
    RolledBack: "resume",
    SamplesGenerated: "samples",
}


class JsonlRecorder:
    """Appends metrics (steps and evals) to metrics.jsonl and every event to events.jsonl.

    Each line goes to the OS as it is written, so a killed run keeps everything logged until
    then. On a full or failing disk a line is dropped, not the run: the part that fitted is cut off
    again (no torn line), the loss is counted (``lost``), said once on stderr, and writing resumes
    when space returns.
    """

    def __init__(self, run_dir: Path) -> None:
        self._metrics = _Appender(run_dir / METRICS)
        self._events = _Appender(run_dir / EVENTS)
        self._samples_path = run_dir / SAMPLES
        self._samples: _Appender | None = None  # opened by a run that samples

    @property
    def lost(self) -> int:
        """Lines that could not be written (a full disk)."""
        return self._metrics.lost + self._events.lost + (self._samples.lost if self._samples else 0)

    def __call__(self, event: Event) -> None:
        if isinstance(event, SamplesGenerated):  # the texts go to samples.jsonl, a line per sample
            if self._samples is None:
                self._samples = _Appender(self._samples_path)
            for sample in event.samples:
                self._samples.write(json.dumps({"step": event.step, **sample}, default=str) + "\n")
            record = event.scores()
        else:
            record = event.to_dict()
        self._events.write(json.dumps(record, default=str) + "\n")
        kind = METRIC_KINDS.get(type(event))
        if kind is not None:
            self._metrics.write(json.dumps({"type": kind, **record}, default=str) + "\n")

    def close(self) -> None:
        self._metrics.close()
        self._events.close()
        if self._samples is not None:
            self._samples.close()


class _Appender:
    """One JSON-lines file open for appending, starting on a fresh line if a writer left half of one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lost = 0
        self.torn = False
        if path.is_file() and path.stat().st_size:
            with path.open("rb") as handle:
                handle.seek(-1, 2)
                self.torn = handle.read(1) != b"\n"
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, line: str) -> None:
        data = (b"\n" if self.torn else b"") + line.encode("utf-8")
        written = 0
        try:
            while written < len(data):
                written += os.write(self.fd, data[written:])
        except OSError as exc:
            if not disk_error(exc):
                raise
            if written:  # part of the line fitted: cut it off again, so no line is ever torn
                self.torn = not self._cut(written) or self.torn
            self.lost += 1
            if self.lost == 1:
                print(f"llmc: cannot write {self.path} ({exc.strerror}); dropping its lines until space returns.",
                      file=sys.stderr)  # fmt: skip
            return
        self.torn = False

    def _cut(self, written: int) -> bool:
        """Remove the ``written`` bytes of a line that did not fit; False if the file could not be cut."""
        try:
            os.ftruncate(self.fd, os.fstat(self.fd).st_size - written)
        except OSError:
            return False
        return True

    def close(self) -> None:
        os.close(self.fd)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``metrics.jsonl`` in order; a torn last line (a killed writer) is skipped."""
    return read_jsonl(run_dir / METRICS)


def by_step(run_dir: Path, kind: str = "train") -> dict[int, dict[str, Any]]:
    """The record of each step of ``kind`` ("train", "eval" or "samples") that the finished run stands on."""
    return standing(read_metrics(run_dir))[kind]


def standing(records: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """For "train", "eval" and "samples": the record of each step the run stands on, by step, in order
    (a ``resume`` record voids the records after its step that an abandoned attempt had logged)."""
    chosen: dict[str, dict[int, dict[str, Any]]] = {"train": {}, "eval": {}, "samples": {}}
    for record in records:
        kind = record.get("type")
        if kind == "resume":
            for kept in chosen:
                chosen[kept] = {step: r for step, r in chosen[kept].items() if step <= record["step"]}
        elif kind in chosen:
            chosen[kind][record["step"]] = record
    return {kind: dict(sorted(steps.items())) for kind, steps in chosen.items()}
