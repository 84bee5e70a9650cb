"""Options shared by several commands, with help texts taken from the config schema where one exists."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmc_cli.config.schema import PRESET_NAMES, describe


def complete_preset(incomplete: str) -> list[str]:
    """The built-in presets and the tuned ones (``tuned:NAME``) that start with ``incomplete``."""
    from llmc_cli.config.tuned import PREFIX, presets_dir

    tuned = sorted(PREFIX + path.stem for path in presets_dir().glob("*.toml"))
    return [name for name in (*PRESET_NAMES, *tuned) if name.startswith(incomplete)]


def complete_run(ctx: typer.Context, incomplete: str) -> list[str]:
    """The run directories under --output (``runs/`` by default) whose names start with ``incomplete``."""
    output = Path(ctx.params.get("output") or "runs")
    if not output.is_dir():
        return []
    names = sorted(p.name for p in output.iterdir() if (p / "config.json").is_file())
    return [name for name in names if name.startswith(incomplete)]


DataOpt = Annotated[Path | None, typer.Option("--data", "-d", help=describe("data"), show_default=False)]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help=describe("model"), show_default=False)]
PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", "-p", help=describe("preset"), show_default=False, autocompletion=complete_preset),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="An llmc.toml file (see llmc.toml.example).", show_default=False)
]
RunArg = Annotated[str, typer.Argument(help="run-42, 42, a run name, or the run's directory.")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Folder that holds the run directories.")]
MetricOpt = Annotated[str, typer.Option("--metric", help="eval_loss or train_loss (lower is better).")]
DashboardOpt = Annotated[
    bool, typer.Option("--dashboard/--no-dashboard", help="Live dashboard on a terminal, or one log line per step.")
]
