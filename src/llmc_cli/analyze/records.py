"""A run's records as the analysis reads them, without loading a model.

``metrics.jsonl`` gives the steps and evaluations the run stands on (a resume or rollback voids
the abandoned attempt's later records: :func:`llmc_cli.engine.record.by_step`); ``events.jsonl``
the adjustments, rollbacks, warnings, checkpoints and system samples; ``config.json`` the config
and each value's source; ``summary.json`` (a finished run) and ``failure.json`` (a failed one) the
outcome. A live run is read as far as it got.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmc_cli.durable import parse_jsonl
from llmc_cli.engine.record import EVENTS, METRICS, read_metrics, standing
from llmc_cli.errors import ConfigError

MAX_SAMPLES = 2000


@dataclass(frozen=True)
class RunRecords:
    run_dir: Path
    config: dict[str, Any]  # flat: key -> value
    sources: dict[str, str]
    steps: list[dict[str, Any]]  # StepEnded records, one per step, in order
    evals: list[dict[str, Any]]  # EvalEnded records, one per step, in order (step 0: before training)
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    data_profile: dict[str, Any] = field(default_factory=dict)  # token lengths of the data (config.json)
    cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # curves, computed once

    @property
    def status(self) -> str:
        """completed, failed, interrupted, or running (no outcome recorded yet)."""
        if self.summary is not None:
            return str(self.summary.get("status", "completed"))
        if self.failure is not None:
            return "failed"
        ended = [e for e in self.events if e.get("event") == "RunEnded"]
        return str(ended[-1].get("status")) if ended else "running"

    @property
    def total_steps(self) -> int | None:
        started = self.of("RunStarted")
        if self.steps:
            return int(self.steps[-1].get("total_steps") or 0) or None
        return int(started[-1]["total_steps"]) if started else None

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The events of one kind (``Adjustment``, ``RolledBack``, ``SystemSampled`` ...), in order."""
        if ("of", kind) not in self.cache:
            self.cache["of", kind] = [e for e in self.events if e.get("event") == kind]
        return self.cache["of", kind]

    def series(self, key: str, records: list[dict[str, Any]] | None = None) -> tuple[list[int], list[float]]:
        """(steps, values) of ``key`` over the train steps (or ``records``), finite numbers only."""
        if records is None and ("series", key) in self.cache:
            return self.cache["series", key]
        finite, number = math.isfinite, (float, int)
        pairs = [(r["step"], v) for r in (self.steps if records is None else records)
                 if (v := r.get(key)).__class__ in number and finite(v)]  # fmt: skip
        steps, values = [p[0] for p in pairs], [float(p[1]) for p in pairs]
        if records is None:
            self.cache["series", key] = (steps, values)
        return steps, values

    def median_update_ratio(self) -> float | None:
        """The median |ΔW|/|W| of the adapter's steps, None where the run did not record it."""
        ratios = self.series("update_ratio")[1]
        return statistics.median(ratios) if ratios else None


def load_run(spec: str | Path, output: Path = Path("runs")) -> RunRecords:
    """Read a run given as a path, a name under ``output`` or a number.

    Raises:
        ConfigError: no such run, a folder that is not a run, or no usable records yet.
    """
    run_dir = _find(spec, output)
    try:
        saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        config = {key: value for section in saved["config"].values() for key, value in section.items()}
        sources = dict(saved.get("sources", {}))
        profile = saved.get("data_profile") if isinstance(saved.get("data_profile"), dict) else {}
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(
            f"{run_dir / 'config.json'} is not an llmc run config ({exc}).",
            hint="Pass a run directory written by llmc train (llmc runs list shows them).",
        ) from None
    if not (run_dir / METRICS).is_file():
        raise ConfigError(
            f"{run_dir} has no {METRICS}: the run has not logged a step yet.",
            hint="Wait for its first step, or check the run's folder.",
        )
    stands = standing(read_metrics(run_dir))
    steps, evals = list(stands["train"].values()), list(stands["eval"].values())
    if not steps and not evals:
        raise ConfigError(
            f"{run_dir / METRICS} has no readable step or evaluation (empty, or cut off mid-line).",
            hint="Analyse it once the run has logged a step; a run killed before its first step has nothing to judge.",
        )
    return RunRecords(
        run_dir, config, sources, steps, evals, _events(run_dir / EVENTS),
        _json(run_dir / "summary.json"), _json(run_dir / "failure.json"), profile,
    )  # fmt: skip


def _find(spec: str | Path, output: Path) -> Path:
    text = str(spec)
    candidates = [Path(text).expanduser(), output / text] + ([output / f"run-{text}"] if text.isdigit() else [])
    for path in candidates:
        if (path / "config.json").is_file():
            return path
    for path in candidates:
        if path.is_dir():
            raise ConfigError(
                f"{path} is not a run directory (no config.json).",
                hint="Pass a folder written by llmc train, e.g. runs/run-3 (llmc runs list shows them).",
            )
    known = sorted(p.name for p in output.glob("*") if (p / "config.json").is_file()) if output.is_dir() else []
    listed = f"Runs in {output}/: {', '.join(known[-8:])}." if known else f"No runs in {output}/; pass the run's path."
    raise ConfigError(f"No run '{text}'.", hint=listed)


def _events(path: Path) -> list[dict[str, Any]]:
    """events.jsonl, with at most MAX_SAMPLES system samples (evenly spaced: a 30-hour run logs
    50,000; parsing them all would cost more than the rest of the analysis)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    samples = [i for i, line in enumerate(lines) if '"SystemSampled"' in line]
    skip = set()
    if len(samples) > MAX_SAMPLES:
        keep = set(samples[:: -(-len(samples) // MAX_SAMPLES)])
        skip = set(samples) - keep
    return parse_jsonl(line for i, line in enumerate(lines) if i not in skip)


def _json(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None
