"""Run directories: ``runs/run-N`` with N one above the highest existing, never reused."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

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


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
