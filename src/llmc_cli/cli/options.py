"""Options shared by several commands, with help texts taken from the config schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmc_cli.config.schema import PresetName, describe

DataOpt = Annotated[Path | None, typer.Option("--data", "-d", help=describe("data"), show_default=False)]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help=describe("model"), show_default=False)]
PresetOpt = Annotated[PresetName | None, typer.Option("--preset", "-p", help=describe("preset"), show_default=False)]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="An llmc.toml file (see llmc.toml.example).", show_default=False)
]
