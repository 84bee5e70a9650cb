"""Plan a resumed run from its own directory: its resolved config, data and model.

``llmc resume`` takes nothing from the current flags, llmc.toml or environment: a run
continues with exactly the config it started with (``config.json``). Relative data paths
are resolved against the directory the run was started from, which checkpoints record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llmc_cli.checkpoints import catalog
from llmc_cli.checkpoints.manifest import Verification, read_manifest
from llmc_cli.config.layers import ResolvedConfig
from llmc_cli.config.schema import RunConfig
from llmc_cli.data.scan import scan
from llmc_cli.engine.plan import RunPlan
from llmc_cli.errors import CheckpointError
from llmc_cli.models.source import resolve_model
from llmc_cli.paths import data_cache_dir


@dataclass
class ResumeTarget:
    """The run to continue, the checkpoint chosen, and the newer ones refused on the way."""

    run_dir: Path
    checkpoint: Path
    refused: list[Verification]


def find_target(run: str | Path, which: str = "latest", output: Path = Path("runs")) -> ResumeTarget:
    """Resolve RUN and ``--from``, falling back past checkpoints that fail verification."""
    run_dir = catalog.resolve_run(run, output)
    requested = catalog.checkpoint_by_spec(run_dir, which)
    chosen, refused = catalog.newest_valid(run_dir, requested)
    return ResumeTarget(run_dir, chosen, refused)


def plan_resume(target: ResumeTarget) -> RunPlan:
    """The plan the run had: config from ``config.json``, model and workdir from the checkpoint."""
    try:
        saved = json.loads((target.run_dir / "config.json").read_text(encoding="utf-8"))
        config = RunConfig.model_validate(saved["config"])
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{target.run_dir / 'config.json'} cannot be read as an llmc run config ({exc}).",
            hint="Resume a run directory written by llmc train.",
        ) from None
    manifest = read_manifest(target.checkpoint) or {}
    workdir = Path(manifest.get("workdir", "."))
    data = config.data.model_copy(
        update={
            key: workdir / path
            for key in ("data", "val_data")
            if (path := getattr(config.data, key)) is not None and not path.is_absolute()
        }
    )
    loaded = scan(data, data_cache_dir(data.data_cache))
    source = resolve_model(manifest.get("model") or config.model.model)
    resolved = ResolvedConfig(config, dict(saved.get("sources", {})))
    return RunPlan(resolved, source, loaded, list(loaded.notes))
