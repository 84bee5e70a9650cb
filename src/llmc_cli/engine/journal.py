"""The journal of what the engine changed on its own: recovery actions and training controls.

Each entry is emitted as an :class:`~llmc_cli.events.Adjustment` (dashboard, plain log,
``events.jsonl``) and kept in memory, so the failure report and the summary are built from it
without reading files back. It is saved in checkpoints and survives rollbacks: going back in
the data does not undo the fact that something was tried.
"""

from __future__ import annotations

from typing import Any

from llmc_cli.events import Adjustment, EventBus


class Journal:
    def __init__(self, bus: EventBus, entries: list[dict[str, Any]] | None = None) -> None:
        self.bus = bus
        self.entries: list[dict[str, Any]] = list(entries or [])

    def record(self, step: int, cause: str, action: str, message: str, settings: dict[str, Any] | None = None) -> None:
        settings = dict(settings or {})
        self.entries.append({"step": step, "cause": cause, "action": action, "message": message, "settings": settings})
        self.bus.emit(Adjustment(step=step, cause=cause, action=action, message=message, settings=settings))
