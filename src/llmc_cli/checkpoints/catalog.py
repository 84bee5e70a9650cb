"""Finding runs and their checkpoints, for the loop, ``llmc checkpoints`` and ``llmc resume``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmc_cli.checkpoints.commit import is_checkpoint_name
from llmc_cli.checkpoints.manifest import Verification, read_manifest, verify
from llmc_cli.errors import CheckpointError, ConfigError

CHECKPOINTS = "checkpoints"
NAME_PATTERN = re.compile(r"^step-(\d+)$")
METRICS = ("eval_loss", "train_loss")  # lower is better for both


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


@dataclass
class Entry:
    """One checkpoint directory as its manifest describes it (not yet verified)."""

    path: Path
    step: int
    manifest: dict[str, Any] | None
    size_bytes: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    @property
    def epoch(self) -> float | None:
        return self.manifest.get("epoch") if self.manifest else None

    @property
    def created(self) -> float | None:
        return self.manifest.get("created") if self.manifest else None


def entries(run_dir: Path) -> list[Entry]:
    """Every ``step-N`` directory of a run, oldest step first; unfinished saves excluded."""
    root = run_dir / CHECKPOINTS
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = NAME_PATTERN.match(path.name)
            if not (match and path.is_dir() and is_checkpoint_name(path.name)):
                continue
            manifest = read_manifest(path)
            files = manifest["files"].values() if manifest else []
            found.append(
                Entry(
                    path=path,
                    step=int(match.group(1)),
                    manifest=manifest,
                    size_bytes=sum(int(f.get("size", 0)) for f in files),
                    metrics=dict(manifest.get("metrics", {})) if manifest else {},
                )
            )
    return sorted(found, key=lambda e: e.step)


def best(found: list[Entry], metric: str = "eval_loss") -> Entry | None:
    """The complete checkpoint with the lowest ``metric`` (the latest among equals)."""
    if metric not in METRICS:
        raise ConfigError(f"Unknown metric '{metric}'.", hint=f"Use one of: {', '.join(METRICS)}.")
    scored = [e for e in found if e.complete and metric in e.metrics]
    return min(reversed(scored), key=lambda e: e.metrics[metric]) if scored else None


def resolve_run(spec: str | Path, output: Path = Path("runs")) -> Path:
    """A run given as a path, a name under ``output`` (``run-42``), or a bare number (``42``)."""
    text = str(spec)
    candidates = [Path(text).expanduser(), output / text]
    if text.isdigit():
        candidates.append(output / f"run-{text}")
    for path in candidates:
        if (path / "config.json").is_file():
            return path
    known = sorted(p.name for p in output.glob("*") if (p / "config.json").is_file()) if output.is_dir() else []
    hint = f"Runs in {output}/: {', '.join(known)}." if known else f"No runs found in {output}/; pass the run's path."
    raise CheckpointError(f"No run '{text}' (looked for a config.json in {', '.join(map(str, candidates))}).", hint)


def checkpoint_by_spec(run_dir: Path, which: str) -> Path:
    """``latest``, ``best``, ``step-N`` / ``N``, or a path to a checkpoint directory."""
    found = entries(run_dir)
    if which == "latest":  # the newest, complete or not: one without its manifest is refused aloud
        if not found:
            raise CheckpointError(f"{run_dir} has no complete checkpoint.", hint=_no_checkpoint_hint(run_dir))
        return found[-1].path
    if which == "best":
        chosen = best(found)
        if chosen is None:
            raise CheckpointError(
                f"No checkpoint of {run_dir} has an eval loss.", hint="Use --from latest, or a step-N."
            )
        return chosen.path
    match = re.fullmatch(r"(?:step-)?(\d+)", which)
    if match:
        step = int(match.group(1))
        for entry in found:
            if entry.step == step:
                return entry.path
        steps = ", ".join(str(e.step) for e in found) or "none"
        raise CheckpointError(f"{run_dir} has no checkpoint at step {step}.", hint=f"Saved steps: {steps}.")
    path = Path(which).expanduser()
    if path.is_dir():
        return path
    raise CheckpointError(
        f"'{which}' is not a checkpoint.", hint="Use latest, best, step-N, or the path of a checkpoint directory."
    )


def newest_valid(run_dir: Path, start: Path) -> tuple[Path, list[Verification]]:
    """``start`` if it verifies, else the newest older checkpoint that does; with the failures seen."""
    start_step = _step(start)
    older = [e.path for e in reversed(entries(run_dir)) if e.path != start and _step(e.path) < start_step]
    chosen, failures = first_valid([start, *older])
    if chosen is not None:
        return chosen, failures
    reasons = "; ".join(f"{f.path.name}: {f.reason()}" for f in failures)
    raise CheckpointError(
        f"No checkpoint of {run_dir} at or before {start.name} passes verification ({reasons}).",
        hint="Start a new run with `llmc train`; llmc never restarts from scratch on its own.",
    )


def valid_before(
    run_dir: Path, step: int | None = None, since: int = 0, accept: Callable[[Entry], bool] | None = None
) -> tuple[Path | None, list[Verification]]:
    """The newest complete checkpoint saved at ``since`` or later and before ``step`` that verifies
    (and that ``accept`` takes, judging its recorded metrics).

    None when there is none; with the verification failures seen on the way.
    """
    limit = step if step is not None else float("inf")
    found = [
        e.path
        for e in reversed(entries(run_dir))
        if e.complete and since <= e.step < limit and (accept is None or accept(e))
    ]
    return first_valid(found)


def first_valid(paths: list[Path]) -> tuple[Path | None, list[Verification]]:
    failures: list[Verification] = []
    for path in paths:
        result = verify(path)
        if result.ok:
            return path, failures
        failures.append(result)
    return None, failures


def _step(path: Path) -> int:
    match = NAME_PATTERN.match(path.name)
    return int(match.group(1)) if match else -1


def _no_checkpoint_hint(run_dir: Path) -> str:
    return f"Checkpoints are saved every --checkpoint-interval steps; {run_dir} stopped before the first one."
