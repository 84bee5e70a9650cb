"""Run directories: ``runs/run-N`` with N one above the highest existing, never reused."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from llmc_cli.durable import disk_errors, write_json
from llmc_cli.engine.plan import RunPlan
from llmc_cli.errors import ConfigError

RUN_PATTERN = re.compile(r"^run-(\d+)$")


def create_run_dir(output: Path, run_name: str | None) -> Path:
    """Create and return a fresh run directory; an existing one is never written into.

    An ``--output`` that is a file, or cannot be created or written (no permission, a read-only
    or full filesystem), is a :class:`ConfigError` naming the path and the reason.
    """
    try:
        return _create(output, run_name)
    except OSError as exc:
        raise _unusable_output(output, exc) from None


def _unusable_output(output: Path, exc: OSError) -> ConfigError:
    blocker = next((p for p in (output, *output.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        problem = f"{blocker} is a file, not a folder"
    elif exc.errno == errno.EROFS:
        problem = "it is on a read-only filesystem"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        problem = f"permission denied ({exc.filename or output})"
    else:
        problem = f"{exc.strerror or exc} ({exc.filename or output})"
    return ConfigError(
        f"Cannot create the run folder under --output {output}: {problem}.",
        hint="Pass --output a folder you can write to (it is created if missing), e.g. --output ./runs.",
    )


def _create(output: Path, run_name: str | None) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    if os.statvfs(output).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, "read-only file system", str(output))
    if not os.access(output, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "permission denied", str(output))
    if run_name is not None:
        path = output / run_name
        try:
            path.mkdir()
        except FileExistsError:
            raise ConfigError(
                f"Run directory {path} already exists; llmc never overwrites a run.",
                hint="Choose another --run-name, or leave it out to get the next run-N.",
            ) from None
        return path
    while True:
        numbers = [int(m.group(1)) for p in output.iterdir() if (m := RUN_PATTERN.match(p.name))]
        path = output / f"run-{max(numbers, default=0) + 1}"
        try:
            path.mkdir()  # atomic: two runs started together get different numbers
            return path
        except FileExistsError:
            continue


def start_run(plan: RunPlan) -> Path:
    """Create the run directory a plan asks for and write its resolved ``config.json``."""
    run = plan.resolved.config.run
    run_dir = create_run_dir(run.output, run.run_name)
    with disk_errors("the run's config.json", run_dir):
        write_json(run_dir / "config.json", plan.record())
    return run_dir
