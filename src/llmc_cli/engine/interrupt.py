"""Turn SIGINT / SIGTERM into a request to stop at the next step boundary.

The first signal only sets a flag: the loop finishes the optimizer step in flight, saves
the adapter and exits cleanly. A second Ctrl-C raises KeyboardInterrupt at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequest:
    """A flag set by signals (installed only in the main thread) or by code."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(signal.Signals(signum).name)
