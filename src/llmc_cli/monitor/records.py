"""Reading a run's ``metrics.jsonl`` back, resumes included.

A run that was killed and resumed logged some steps twice: the attempt that died logged
steps after its last checkpoint, and the resumed run logged them again after a
``{"type": "resume", "step": N}`` line. The records that count are the later ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``metrics.jsonl`` in order; a torn last line (a killed writer) is skipped."""
    records = []
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def by_step(run_dir: Path, kind: str = "train") -> dict[int, dict[str, Any]]:
    """The record of each step of ``kind`` ("train" or "eval") that the finished run stands on."""
    chosen: dict[int, dict[str, Any]] = {}
    for record in read_metrics(run_dir):
        if record.get("type") == "resume":
            chosen = {step: r for step, r in chosen.items() if step <= record["step"]}
        elif record.get("type") == kind:
            chosen[record["step"]] = record
    return dict(sorted(chosen.items()))
