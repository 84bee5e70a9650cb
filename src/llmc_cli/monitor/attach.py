"""What watches a run besides its own record: trackers, the issue detectors, the system sampler.

The caller (``FineTuner``, hence ``llmc train`` and ``llmc resume``) attaches these to the
run's event bus; the engine knows none of them. ``observe`` also runs the bus, so the order
at the end is right: the sampler stops, every queued event is delivered, then trackers close.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from llmc_cli.config.schema import RunConfig
from llmc_cli.events import EventBus
from llmc_cli.monitor import reporters
from llmc_cli.monitor.detectors import IssueMonitor
from llmc_cli.monitor.system import SystemSampler


@contextmanager
def observe(bus: EventBus, run_dir: Path, config: RunConfig, tags: dict[str, str] | None = None) -> Iterator[EventBus]:
    """Subscribe the trackers of ``report_to`` (``tags`` for those that keep them) and (with
    ``enable_monitoring``) the issue detectors, start the bus and the system sampler; on exit stop
    them and close the trackers."""
    trackers = reporters.create(config.run.report_to, run_dir, config.flat(), tags)
    for tracker in trackers:
        bus.subscribe(tracker)
    monitoring = config.run.enable_monitoring
    if monitoring:
        bus.subscribe(IssueMonitor(bus))
    try:
        with bus, SystemSampler(bus) if monitoring else nullcontext():
            yield bus
    finally:
        for tracker in trackers:
            try:
                tracker.close()
            except Exception as exc:  # noqa: BLE001 - a tracker failing to close must not change the run's outcome
                print(f"llmc: closing {type(tracker).__name__} failed: {exc}", file=sys.stderr)
