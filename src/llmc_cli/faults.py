"""Fault injection for the reliability tests: fail at a chosen moment, on purpose.

``LLMC_FAULTS`` holds comma-separated items ``name[@step][:action]``; the step is written
``12``, ``step=12`` or a range ``step=30-34``, and may be left out to fire at every step.

Training faults fire at the given optimizer step, once per process unless the action is
``every`` (a bad batch that comes back after a rollback):

- ``oom``      CUDA out of memory during the step (``torch.OutOfMemoryError``)
- ``cpu-oom``  the CPU allocator's failure, as PyTorch raises it under a memory limit
- ``nan``      the step's loss becomes NaN
- ``spike``    the step's loss is multiplied by 10
- ``grad-spike`` the step's gradients are multiplied by 20 before clipping (the loss is not): an explosion
  for the instability control (10x the recent median), below the 100x-the-start divergence test
- ``data``     the step's batch cannot be read
- ``error``    any other exception (a bug, a driver failure)
- ``eval-oom`` out of memory in the evaluation at that step

Checkpoint faults fire when a save reaches a point, every time: ``checkpoint.write``,
``checkpoint.before-rename``, ``checkpoint.after-rename``, ``checkpoint.during-delete``, with
action ``kill`` (SIGKILL this process), ``enospc`` (raise ``OSError`` "No space left on
device") or ``library`` (raise safetensors' own ``SafetensorError`` with the OS message, as
safetensors does on a full disk).

Real full disks, for a run whose output is on a small filesystem (a test's tmpfs: refused
where more than ``MAX_FILL_BYTES`` are free, so a real disk is never filled):

- ``disk-fill@N`` fills the filesystem of the run directory to the last byte at the boundary
  of step N (before its evaluation and checkpoint); ``disk-free@N`` gives the space back;
- ``disk-fill.final``, ``disk-fill.merge``, ``disk-fill.report`` fill it just before the final
  adapter, the merged model or the failure report is written.

Every write after a fill meets the OS's own ENOSPC, in whichever library makes it.

Example: ``LLMC_FAULTS="oom@step=12,nan@step=30,checkpoint.write@4:enospc"``. The engine is
given a :class:`Faults` object (``Faults.from_env()`` unless the caller passes one; ``NO_FAULTS``
when nothing is configured) and calls it at those points; with no faults each call returns at once.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from llmc_cli.errors import ConfigError, UnreadableBatch

ENV = "LLMC_FAULTS"
TRAINING = ("oom", "cpu-oom", "nan", "spike", "grad-spike", "data", "error", "eval-oom")
CHECKPOINT = ("checkpoint.write", "checkpoint.before-rename", "checkpoint.after-rename", "checkpoint.during-delete")
DISK = ("disk-fill", "disk-free", "disk-fill.final", "disk-fill.merge", "disk-fill.report")
FILLER = ".llmc-disk-filler"
MAX_FILL_BYTES = 2 << 30
SPIKE_FACTOR = 10.0
GRAD_SPIKE_FACTOR = 20.0
CPU_OOM_MESSAGE = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 268435456 bytes. Error code 12 (Cannot allocate memory) (injected)"
)


class InjectedError(RuntimeError):
    """The ``error`` fault: stands for any failure llmc has no specific recovery for."""


@dataclass(frozen=True)
class Fault:
    name: str
    first: int | None  # None: every step
    last: int | None
    action: str

    def matches(self, name: str, step: int | None) -> bool:
        if name != self.name:
            return False
        return self.first is None or step is None or self.first <= step <= (self.last or self.first)


def parse(spec: str) -> list[Fault]:
    """Parse ``LLMC_FAULTS``; a malformed item raises ValueError naming it."""
    faults = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        match = re.fullmatch(r"([a-z.-]+)(?:@(?:step=)?(\d+)(?:-(\d+))?)?(?::([a-z]+))?", item)
        names = TRAINING + CHECKPOINT + DISK
        if not match or match.group(1) not in names:
            raise ValueError(f"{ENV}: cannot read {item!r}; names: {', '.join(names)}")
        name, first, last, action = match.groups()
        allowed = ("kill", "enospc", "library") if name in CHECKPOINT else ("once", "every")
        action = action or allowed[0]
        if action not in allowed:
            raise ValueError(f"{ENV}: action {action!r} in {item!r}; use {' or '.join(allowed)}")
        faults.append(Fault(name, int(first) if first else None, int(last) if last else None, action))
    return faults


class Faults:
    """The faults of one run; the engine calls these methods at fixed points and each does
    nothing unless a fault is configured for that point and step.

    A ``once`` training fault fires at most once per step (a retried step then succeeds); an
    ``every`` fault fires whenever its step runs. Checkpoint faults fire every time.
    """

    def __init__(self, faults: list[Fault] | None = None) -> None:
        self.faults = list(faults or [])
        self._fired: set[tuple[Fault, int]] = set()

    @classmethod
    def from_env(cls) -> Faults:
        """The faults in ``LLMC_FAULTS`` (none when it is unset or empty)."""
        try:
            return cls(parse(os.environ.get(ENV, "")))
        except ValueError as exc:
            raise ConfigError(str(exc), hint=f"Fix or unset {ENV}; its grammar is in llmc_cli/faults.py.") from None

    def __bool__(self) -> bool:
        return bool(self.faults)

    def _fires(self, name: str, step: int | None) -> Fault | None:
        for fault in self.faults:
            if not fault.matches(name, step):
                continue
            if name in CHECKPOINT or step is None:
                return fault
            if fault.action == "every" or (fault, step) not in self._fired:
                self._fired.add((fault, step))
                return fault
        return None

    def in_step(self, step: int) -> None:
        """Raise the failure injected into ``step``'s forward/backward, if any."""
        if not self.faults:
            return
        if self._fires("oom", step):
            import torch

            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (injected at step {step})")
        if self._fires("cpu-oom", step):
            raise RuntimeError(CPU_OOM_MESSAGE)
        if self._fires("data", step):
            raise UnreadableBatch(f"Batch of step {step} cannot be read (injected)")
        if self._fires("error", step):
            raise InjectedError(f"Injected failure at step {step}")

    def loss_factor(self, step: int) -> float:
        """What the step's loss is multiplied by: NaN, the spike factor, or 1."""
        if not self.faults:
            return 1.0
        if self._fires("nan", step):
            return math.nan
        return SPIKE_FACTOR if self._fires("spike", step) else 1.0

    def gradient_factor(self, step: int) -> float:
        """What the step's gradients are multiplied by before clipping (the loss is untouched)."""
        return GRAD_SPIKE_FACTOR if self.faults and self._fires("grad-spike", step) else 1.0

    def in_eval(self, step: int) -> None:
        if self.faults and self._fires("eval-oom", step):
            import torch

            raise torch.OutOfMemoryError(f"CUDA out of memory during evaluation (injected at step {step})")

    def at_checkpoint(self, point: str, step: int | None = None) -> None:
        """Fire the checkpoint fault configured for ``point`` (at ``step``): SIGKILL or a full disk."""
        fault = self._fires(point, step) if self.faults else None
        if fault is None:
            return
        if fault.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault.action == "library":
            from safetensors import SafetensorError

            raise SafetensorError(
                f"Error while serializing: I/O error: No space left on device (os error 28) ({point})"
            )
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {point})")

    def at_boundary(self, step: int, run_dir: Path) -> None:
        """Fill or free the run's filesystem at the boundary of ``step`` (``disk-fill`` / ``disk-free``)."""
        if not self.faults:
            return
        if self._fires("disk-free", step):
            (run_dir / FILLER).unlink(missing_ok=True)
        if self._fires("disk-fill", step):
            fill(run_dir)

    def fill_disk(self, point: str, run_dir: Path) -> None:
        """Fill the run's filesystem before ``point`` (``final``, ``merge``, ``report``) is written."""
        if self.faults and self._fires(f"disk-fill.{point}", None):
            fill(run_dir)


def fill(directory: Path) -> None:
    """Write a filler file until the filesystem holding ``directory`` has no byte left."""
    free = shutil.disk_usage(directory).free
    if free > MAX_FILL_BYTES:
        raise ConfigError(
            f"{ENV}: refusing to fill a filesystem with {free:,} bytes free ({directory}).",
            hint="Disk faults are for runs whose output is on a small test filesystem (a tmpfs).",
        )
    fd = os.open(directory / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        chunk = 1 << 20
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                chunk //= 2
    finally:
        os.close(fd)


NO_FAULTS = Faults()
