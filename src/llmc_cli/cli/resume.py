"""``llmc resume``: continue a run from a checkpoint, with the run's own config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from llmc_cli.cli.options import DashboardOpt, OutputOpt, RunArg
from llmc_cli.cli.train import execute, quiet_libraries


def resume(
    run: RunArg,
    source: Annotated[
        str, typer.Option("--from", help="latest, best, step-N, or a checkpoint directory.", show_default=True)
    ] = "latest",
    output: OutputOpt = Path("runs"),
    dashboard: DashboardOpt = True,
) -> None:
    """Continue a run exactly where a checkpoint left it.

    A checkpoint that fails verification is refused and the newest valid one before it is
    used; llmc says which and why.

    Examples:

      llmc resume run-3

      llmc resume run-3 --from best
    """
    console = Console()
    with console.status("Loading the training engine..."):
        quiet_libraries()
        from llmc_cli import FineTuner

    with console.status("Verifying checkpoints, data and model..."):
        tuner = FineTuner.resume(run, checkpoint=source, output=output)
    target = tuner.resume_target
    for refused in target.refused:
        console.print(f"[yellow]Refused {refused.path.name}:[/] {refused.reason()}", highlight=False)
    console.print(f"Resuming {target.run_dir} from {target.checkpoint.name}.", highlight=False)
    execute(tuner, console, dashboard)
