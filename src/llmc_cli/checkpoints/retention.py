"""Which checkpoints to keep: the newest ``keep_last`` plus the best ``keep_best`` by a metric.

One rule for the rotation after every save and for ``llmc checkpoints prune``.
"""

from __future__ import annotations

from pathlib import Path

from llmc_cli.checkpoints.catalog import METRICS, Entry, entries
from llmc_cli.checkpoints.commit import remove
from llmc_cli.errors import ConfigError
from llmc_cli.faults import NO_FAULTS, Faults


def beyond_retention(found: list[Entry], keep_last: int, keep_best: int, metric: str) -> list[Entry]:
    """Complete checkpoints outside the newest ``keep_last`` and the best ``keep_best`` by ``metric``.

    Incomplete directories are never selected: they are not checkpoints, and a person may
    want to look at them.
    """
    complete = [e for e in found if e.complete]
    kept = {e.path for e in complete[-keep_last:]} if keep_last > 0 else set()
    scored = sorted((e for e in complete if metric in e.metrics), key=lambda e: (e.metrics[metric], -e.step))
    kept.update(e.path for e in scored[:keep_best])
    return [e for e in complete if e.path not in kept]


def prune(
    run_dir: Path,
    keep_last: int,
    keep_best: int,
    metric: str,
    *,
    dry_run: bool = False,
    faults: Faults = NO_FAULTS,
    step: int | None = None,
) -> list[Entry]:
    """Delete (or with ``dry_run`` only list) the complete checkpoints outside the retention rule."""
    if metric not in METRICS:
        raise ConfigError(f"Unknown metric '{metric}'.", hint=f"Use one of: {', '.join(METRICS)}.")
    doomed = beyond_retention(entries(run_dir), keep_last, keep_best, metric)
    if not dry_run:
        for entry in doomed:
            remove(entry.path, faults, step)
    return doomed
