"""``llmc prepare``: tokenise a data file into the cache once; list and clean the cache."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llmc_cli.cli.options import ConfigOpt, DataOpt, ModelOpt, PresetOpt
from llmc_cli.cli.train import _opt, config_flags, quiet_libraries
from llmc_cli.config.schema import DataFormat, Overlong

HOW = "How the data is tokenised and packed"


def prepare(
    data: DataOpt = None,
    model: ModelOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    max_length: Annotated[int | None, _opt("max_length", "--max-length")] = None,
    format: Annotated[DataFormat | None, _opt("format", "--format", metavar="<choice>")] = None,  # noqa: A002 - the config key
    overlong: Annotated[Overlong | None, _opt("overlong", "--overlong", metavar="<choice>")] = None,
    limit: Annotated[int | None, _opt("limit", "--limit")] = None,
    val_data: Annotated[Path | None, _opt("val_data", "--val-data")] = None,
    seed: Annotated[int | None, _opt("seed", "--seed")] = None,
    train_on_prompt: Annotated[
        bool | None, _opt("train_on_prompt", "--train-on-prompt/--no-train-on-prompt", rich_help_panel=HOW)
    ] = None,
    packing: Annotated[bool | None, _opt("packing", "--packing/--no-packing", rich_help_panel=HOW)] = None,
    data_cache: Annotated[Path | None, _opt("data_cache", "--data-cache")] = None,
    data_workers: Annotated[int | None, _opt("data_workers", "--workers", "--data-workers")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the prepared data in the cache and exit.")] = False,
    clean: Annotated[bool, typer.Option("--clean", help="Remove everything in the data cache and exit.")] = False,
) -> None:
    """Tokenise a data file for a model once; later runs with the same settings reuse it.

    Takes the same data, model, preset and config flags as `llmc train`, so the cache it
    writes is the one that run reads. Only the model's tokenizer is loaded, not its weights.

    Examples:

      llmc prepare --data big.jsonl --model ./TinyLlama-1.1B-Chat --preset quality

      llmc prepare --list

      llmc prepare --clean
    """
    flags = config_flags(locals())
    console = Console()
    if list_ or clean:
        _manage(console, flags.get("data_cache"), clean)
        return
    with console.status("Loading..."):
        quiet_libraries()
        from llmc_cli import FineTuner

    tuner = FineTuner(config_file=config, **flags)
    started = time.monotonic()
    with console.status("Checking configuration, data and model..."):
        plan = tuner.plan()
    console.print(
        f"Checked {plan.data.records:,} records of {plan.data.format} data in {time.monotonic() - started:.1f} s.",
        highlight=False,
    )
    with _ProgressDisplay(console) as progress:
        rows = tuner.prepare(progress=progress, warn=lambda note: console.print(f"warning: {note}", highlight=False))
    report = rows.train_report
    if report.lengths:
        lengths, max_length = report.lengths, plan.resolved.config.data.max_length
        console.print(
            f"Token lengths before truncation: median {lengths['p50']:,}, p95 {lengths['p95']:,}, "
            f"p99 {lengths['p99']:,}, longest {lengths['max']:,} (max_length {max_length:,}).",
            highlight=False,
        )
    verb = "Reused" if rows.reused else "Prepared"
    console.print(
        f"{verb} {rows.cache_path}: {len(rows.train):,} train rows from {report.kept:,} examples "
        f"({report.tokens:,} tokens), {len(rows.val):,} validation rows; {time.monotonic() - started:.1f} s in all.",
        highlight=False,
        soft_wrap=True,
    )


class _ProgressDisplay:
    """A progress bar with rate and ETA on a terminal; a line every few seconds otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = None
        self.task = None

    def __enter__(self):
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.bar.start()
        return self

    def __call__(self, stage: str, done: int, total: int, elapsed_s: float) -> None:
        from llmc_cli.events import DataProgress
        from llmc_cli.monitor.progress import describe_data

        if self.bar is None:
            self.console.print(describe_data(DataProgress(stage, done, total, elapsed_s)), highlight=False)
            return
        rate = f"{done / elapsed_s:,.0f} records/s" if elapsed_s > 0 else ""
        if self.task is None:
            self.task = self.bar.add_task(f"Preparing ({stage})", total=total, completed=done, rate=rate)
        else:
            self.bar.update(self.task, completed=done, rate=rate)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _manage(console: Console, configured: Path | None, clean: bool) -> None:
    from llmc_cli.data.cache import list_entries, remove_entries
    from llmc_cli.durable import human_bytes
    from llmc_cli.paths import data_cache_dir

    root = data_cache_dir(configured)
    if clean:
        freed = remove_entries(root)
        console.print(f"Removed the prepared data in {root}: {human_bytes(freed)} freed.", highlight=False)
        return
    entries = list_entries(root)
    if not entries:
        console.print(f"No prepared data in {root}.", highlight=False)
        return
    table = Table(title=f"Prepared data in {root}")
    for column in ("key", "data", "tokenizer", "max length", "records", "tokens", "size", "built"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(
            entry["key"],
            str(entry.get("data", "?")),
            Path(str(entry.get("tokenizer", "?"))).name,
            str(entry.get("max_length", "?")),
            f"{entry.get('records', 0):,}",
            f"{entry.get('tokens', 0):,}",
            human_bytes(entry["bytes"]),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.get("created", 0))),
        )
    console.print(table)
