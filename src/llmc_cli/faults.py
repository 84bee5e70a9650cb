"""Fault injection for the reliability tests: crash or fail at a named point, on purpose.

``LLMC_FAULTS`` holds comma-separated ``point@step:action`` items, for example
``checkpoint.before-rename@4:kill`` (SIGKILL this process when the step-4 checkpoint reaches
that point) or ``checkpoint.write@2:enospc`` (raise "No space left on device" there). The
step may be left out to fire every time. Without the variable every call returns at once.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "LLMC_FAULTS"


def hit(point: str, step: int | None = None) -> None:
    """Fire the fault configured for ``point`` (at ``step``), if any."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for item in spec.split(","):
        where, _, action = item.strip().partition(":")
        name, _, at = where.partition("@")
        if name != point or (at and step is not None and int(at) != step):
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "enospc":
            raise OSError(errno.ENOSPC, f"No space left on device (injected at {point})")
        raise ValueError(f"{ENV}: unknown action {action!r} in {item!r} (use kill or enospc)")
