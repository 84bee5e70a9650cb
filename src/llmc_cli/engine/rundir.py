"""Run directories: ``runs/run-N`` with N one above the highest existing, never reused."""

from __future__ import annotations

import re
from pathlib import Path

from llmc_cli.durable import write_json
from llmc_cli.engine.plan import RunPlan
from llmc_cli.errors import ConfigError

RUN_PATTERN = re.compile(r"^run-(\d+)$")


def create_run_dir(output: Path, run_name: str | None) -> Path:
    """Create and return a fresh run directory; an existing one is never written into."""
    output.mkdir(parents=True, exist_ok=True)
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
    write_json(run_dir / "config.json", plan.resolved.to_json())
    return run_dir
