"""``llmc presets``: list the preset table, or show the config a preset resolves to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llmc_cli.cli.options import ConfigOpt
from llmc_cli.config.schema import PRESET_NAMES, PresetName

app = typer.Typer(help="Inspect the presets (family x preset x dataset size).", no_args_is_help=True)


@app.command("list")
def list_presets() -> None:
    """List every family and preset with its base values and per-size schedule."""
    from llmc_cli.config.presets import load_presets

    book = load_presets()
    table = Table(title="llmc presets: epochs / lr by dataset size")
    small, large = book.buckets.small_below, book.buckets.large_from
    headers = ("family", "preset", "r/alpha/drop", "targets", "len", "batch", f"<{small:,}", "medium", f">={large:,}")
    for column in headers:
        table.add_column(column)
    for family, presets in book.families.items():
        for name in PRESET_NAMES:
            base = presets[name].base
            targets = base["target_modules"]
            row = [
                family,
                name,
                f"{base['lora_r']}/{base['lora_alpha']:g}/{base['lora_dropout']:g}",
                targets if isinstance(targets, str) else ",".join(targets),
                str(base["max_length"]),
                f"{base['batch_size']}x{base['grad_accum']}",
            ]
            spec = presets[name]
            row += [f"{b.epochs:g}/{b.lr:g}" for b in (spec.small, spec.medium, spec.large)]
            table.add_row(*row)
    Console().print(table)


@app.command("show")
def show(
    name: Annotated[PresetName, typer.Argument(help="Preset name.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Family (tinyllama, phi, mistral, qwen) or a local model folder.")
    ] = "tinyllama",
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Data file, to pick the size bucket.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Show the resolved config for a preset and which layer set each value.

    Example: llmc presets show quality --model phi --data train.jsonl
    """
    from llmc_cli.engine.plan import preview

    resolved = preview(name, model, data, config)
    table = Table(title=f"preset {name} for {model}")
    for column in ("key", "value", "source"):
        table.add_column(column)
    for key, value in resolved.config.flat().items():
        shown = ",".join(value) if isinstance(value, list) else str(value)
        table.add_row(key, shown, resolved.sources[key])
    console = Console()
    console.print(table)
    if resolved.config.model.optimize_for_data or resolved.config.model.optimize_memory:
        console.print(
            "A run then fits these values to its data and memory (optimize_for_data, optimize_memory); "
            "llmc train --dry-run shows the result and why."
        )
