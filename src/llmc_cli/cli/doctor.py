"""``llmc doctor``: what this machine has, and what it implies for training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llmc_cli.cli.options import OutputOpt


def doctor(
    output: OutputOpt = Path("runs"),
    data_cache: Annotated[
        Path | None, typer.Option("--data-cache", help="The prepared-data cache to check (default: llmc's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the probe and its advice as JSON.")] = False,
) -> None:
    """Probe CPU, memory, GPUs, disk and libraries, and say what they imply (no model is loaded).

    Examples:

      llmc doctor

      llmc doctor --json
    """
    from llmc_cli.optimize.machine import advise, family_report, probe
    from llmc_cli.paths import data_cache_dir

    console = Console()
    with console.status("Probing the machine..."):
        machine = probe([output, data_cache_dir(data_cache)])
        advice = advise(machine)
        report = family_report(machine, advice[0].answer)  # advice[0]: the precision training would use
    if as_json:
        payload = {"machine": machine.to_dict(), "advice": [vars(a) for a in advice], "families": report.to_dict()}
        print(json.dumps(payload, indent=2))
        return
    facts = Table(title="This machine", show_header=False)
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    flags = ", ".join(flag for flag, present in machine.cpu_flags.items() if present) or "unknown"
    facts.add_row("CPU", f"{machine.cpu_model}: {machine.cpu_cores} usable cores of {machine.cpu_logical}")
    facts.add_row("CPU flags", flags)
    facts.add_row(
        "RAM", f"{machine.ram_available_bytes / 2**30:.1f} GiB available of {machine.ram_total_bytes / 2**30:.1f} GiB"
    )
    for gpu in machine.gpus:
        free = f"{gpu.memory_free_bytes / 2**30:.1f} GiB free of " if gpu.memory_free_bytes is not None else ""
        facts.add_row(
            f"GPU {gpu.index}",
            f"{gpu.name}: {free}{gpu.memory_total_bytes / 2**30:.1f} GiB, compute capability "
            f"{gpu.compute_capability}, bf16 {'yes' if gpu.bf16 else 'no'}",
        )
    facts.add_row("Software", f"Python {machine.python}, torch {machine.torch} (CUDA {machine.cuda or 'none'}), "
                  f"bitsandbytes {machine.bitsandbytes or 'not installed'}")  # fmt: skip
    for note in machine.notes:
        facts.add_row("Note", note)
    console.print(facts)
    implied = Table(title="What it implies")
    for column in ("", "answer", "why"):
        implied.add_column(column, overflow="fold")
    for item in advice:
        implied.add_row(item.topic, item.answer, item.why)
    console.print(implied)
    console.print(families_table(report))


def families_table(report) -> Table:
    """Family x preset: the micro-batch that fits and the estimated peak, or what it would need."""
    from llmc_cli.config.families import FAMILIES
    from llmc_cli.config.schema import PRESET_NAMES

    table = Table(
        title=f"Which model fits: estimated peak in {report.precision}, at each preset's max_length, against "
        f"{report.budget_bytes / 2**30:.1f} GiB ({report.budget_rule})"
    )
    table.add_column("family")
    for preset in PRESET_NAMES:
        table.add_column(preset, overflow="fold")
    quantized = {(f.family, f.preset): f for f in report.fits_4bit}
    for family in dict.fromkeys(fit.family for fit in report.fits):
        cells = []
        for fit in (f for f in report.fits if f.family == family):
            if fit.fits:
                checkpointed = " + checkpointing" if fit.gradient_checkpointing else ""
                cells.append(f"[green]micro-batch {fit.micro_batch}{checkpointed}[/], {_gib(fit.total_bytes)}")
                continue
            cell = f"[red]does not fit[/]: needs {_gib(fit.total_bytes)}"
            q = quantized.get((family, fit.preset))
            if q is not None and q.fits:
                cell += f"; 4-bit: micro-batch {q.micro_batch}, {_gib(q.total_bytes)}"
            cells.append(cell)
        table.add_row(f"{family} {FAMILIES[family].billions:g}B", *cells)
    return table


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"
