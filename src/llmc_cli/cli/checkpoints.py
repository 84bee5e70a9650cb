"""``llmc checkpoints``: list, pick, prune, verify and inspect a run's checkpoints."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llmc_cli.checkpoints import catalog, retention
from llmc_cli.checkpoints.manifest import verify
from llmc_cli.cli.options import MetricOpt, OutputOpt, RunArg
from llmc_cli.errors import CheckpointError

app = typer.Typer(help="List, choose, prune and verify checkpoints.", no_args_is_help=True)


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n >= 2**20 else f"{n / 2**10:,.1f} KB"


def _age(created: float | None) -> str:
    if created is None:
        return "?"
    seconds = max(0, int(time.time() - created))
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length}{unit} ago"
    return f"{seconds}s ago"


def _metric(entry: catalog.Entry, key: str) -> str:
    value = entry.metrics.get(key)
    return f"{value:.4f}" if value is not None else "-"


@app.command("list")
def list_checkpoints(
    run: RunArg,
    output: OutputOpt = Path("runs"),
    metric: MetricOpt = "eval_loss",
    quick: Annotated[bool, typer.Option("--quick", help="Check sizes only, not sha256 digests.")] = False,
) -> None:
    """A table of the run's checkpoints: step, epoch, metrics, size, age, best, verified."""
    run_dir = catalog.resolve_run(run, output)
    found = catalog.entries(run_dir)
    if not found:
        Console().print(f"{run_dir} has no checkpoints yet.", highlight=False)
        return
    best = catalog.best(found, metric)
    table = Table(title=f"Checkpoints of {run_dir}")
    for column in ("step", "epoch", "eval loss", "train loss", "size", "age", "best", "verified"):
        table.add_column(column, justify="right" if column not in ("best", "verified") else "left")
    for entry in found:
        check = verify(entry.path, digests=not quick)
        table.add_row(
            str(entry.step),
            f"{entry.epoch:.2f}" if entry.epoch is not None else "-",
            _metric(entry, "eval_loss"),
            _metric(entry, "train_loss"),
            _size(entry.size_bytes),
            _age(entry.created),
            "*" if best is not None and entry.path == best.path else "",
            "[green]ok[/]" if check.ok else f"[red]FAILED[/] {check.reason()}",
        )
    Console().print(table)


@app.command("best")
def best_checkpoint(run: RunArg, output: OutputOpt = Path("runs"), metric: MetricOpt = "eval_loss") -> None:
    """Print the path of the best checkpoint by METRIC (for scripts)."""
    run_dir = catalog.resolve_run(run, output)
    chosen = catalog.best(catalog.entries(run_dir), metric)
    if chosen is None:
        raise CheckpointError(f"No checkpoint of {run_dir} records {metric}.", hint="Try --metric train_loss.")
    print(chosen.path)


@app.command("prune")
def prune(
    run: RunArg,
    keep: Annotated[int, typer.Option("--keep", min=1, help="Newest checkpoints to keep.")] = 1,
    keep_best: Annotated[int, typer.Option("--keep-best", min=0, help="Best checkpoints to keep too.")] = 1,
    metric: MetricOpt = "eval_loss",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be deleted.")] = False,
    output: OutputOpt = Path("runs"),
) -> None:
    """Delete all but the newest KEEP and the best KEEP_BEST checkpoints."""
    run_dir = catalog.resolve_run(run, output)
    complete = sum(e.complete for e in catalog.entries(run_dir))
    doomed = retention.prune(run_dir, keep, keep_best, metric, dry_run=dry_run)
    kept = complete - len(doomed)
    console = Console()
    for entry in doomed:
        console.print(f"{'would delete' if dry_run else 'deleted'} {entry.path} ({_size(entry.size_bytes)})")
    freed = sum(e.size_bytes for e in doomed)
    verb = "would free" if dry_run else "freed"
    console.print(f"{kept} kept, {len(doomed)} {'to delete' if dry_run else 'deleted'}, {verb} {_size(freed)}.")


@app.command("verify")
def verify_command(
    target: Annotated[str, typer.Argument(help="A run (every checkpoint) or one checkpoint directory.")],
    output: OutputOpt = Path("runs"),
) -> None:
    """Check every file against the manifest's size and sha256; exit 6 on any mismatch."""
    path = Path(target).expanduser()
    if (path / "manifest.json").exists() or catalog.NAME_PATTERN.match(path.name):
        paths = [path]
    else:
        run_dir = catalog.resolve_run(target, output)
        paths = [e.path for e in catalog.entries(run_dir)]
        if not paths:
            raise CheckpointError(f"{run_dir} has no checkpoints to verify.")
    console = Console()
    failed = []
    for checkpoint in paths:
        result = verify(checkpoint)
        console.print(f"{'ok    ' if result.ok else 'FAILED'} {checkpoint}: {result.reason()}", highlight=False)
        if not result.ok:
            failed.append(checkpoint.name)
    if failed:
        raise CheckpointError(f"{len(failed)} of {len(paths)} checkpoints failed verification: {', '.join(failed)}.")


@app.command("info")
def info(path: Annotated[Path, typer.Argument(help="A checkpoint directory.")]) -> None:
    """Show a checkpoint's manifest: step, epoch, metrics, versions, files."""
    from llmc_cli.checkpoints.manifest import read_manifest

    manifest = read_manifest(path)
    if manifest is None:
        raise CheckpointError(
            f"{path} has no readable manifest.json: it is not a complete llmc checkpoint.",
            hint="List a run's checkpoints with `llmc checkpoints list RUN`.",
        )
    console = Console()
    files = manifest.pop("files")
    console.print_json(json.dumps(manifest, default=str))
    table = Table(title="files")
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("sha256")
    for name, meta in files.items():
        table.add_row(name, _size(int(meta["size"])), meta["sha256"][:16] + "...")
    console.print(table)
