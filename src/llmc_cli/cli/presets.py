"""``llmc presets``: list the preset table, or show the config a preset resolves to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llmc_cli.cli.options import ConfigOpt, complete_preset
from llmc_cli.config.schema import PRESET_NAMES

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
    console = Console()
    console.print(table)
    _list_tuned(console)


def _list_tuned(console: Console) -> None:
    """The tuned presets (``llmc tune best --export NAME``), if any."""
    from llmc_cli.config.tuned import PREFIX, load_tuned, presets_dir

    paths = sorted(presets_dir().glob("*.toml"))
    if not paths:
        console.print(f"No tuned presets in {presets_dir()} (llmc tune best STUDY --export NAME makes one).")
        return
    table = Table(title=f"Tuned presets ({presets_dir()})")
    for column in ("preset", "base", "values"):
        table.add_column(column, overflow="fold")
    for path in paths:
        tuned = load_tuned(PREFIX + path.stem)
        values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in tuned.values.items())
        table.add_row(PREFIX + tuned.name, tuned.base, values)
    console.print(table)


@app.command("show")
def show(
    name: Annotated[
        str, typer.Argument(help="highspeed, quality, bestaccuracy or tuned:NAME.", autocompletion=complete_preset)
    ],
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


@app.command("recommend")
def recommend(
    data: Annotated[Path, typer.Option("--data", "-d", help="The training data file.")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="A model folder or hub id (default: the model folder found here)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the options and the choice as JSON.")] = False,
) -> None:
    """Which preset suits this data on this machine: each preset's fit, steps and time, and why one.

    Example: llmc presets recommend --data train.jsonl --model ./TinyLlama-1.1B-Chat
    """
    import json

    from llmc_cli.cli.train import quiet_libraries
    from llmc_cli.setup.assess import assess_presets
    from llmc_cli.setup.recommend import bucket_of, recommend_preset
    from llmc_cli.setup.tables import presets_table

    quiet_libraries()
    console = Console()
    model = model or _local_model()
    with console.status("Planning each preset on this data and machine..."):
        options = assess_presets(data, model)
    if all(option.failure is not None for option in options):
        raise options[0].failure  # the data or model error itself, with its exit code
    records = next(o.train_records for o in options if o.train_records is not None)
    choice = recommend_preset(options, bucket_of(records))
    if as_json:
        payload = {"recommended": choice.choice, "reason": choice.reason, "options": [o.to_dict() for o in options]}
        print(json.dumps(payload, indent=2))
        return
    console.print(presets_table(options, choice.choice))
    console.print(f"[bold]Recommended:[/] {choice.choice}: {choice.reason}", soft_wrap=True)


def _local_model() -> str:
    from llmc_cli.errors import ConfigError
    from llmc_cli.setup.models import find_models

    found = find_models([(Path("."), "current folder")])
    if not found:
        raise ConfigError("No model folder here to plan with.", hint="Pass --model FOLDER (or a hub id).")
    return str(found[0].location)
