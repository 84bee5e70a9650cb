"""``llmc analyze RUN [RUN...]``: a run's report in the terminal; ``llmc runs list``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llmc_cli.cli.options import OutputOpt, complete_run


def analyze(
    runs: Annotated[
        list[str],
        typer.Argument(
            help="run-42, 42, a run name, or a run's directory; several compare.", autocompletion=complete_run
        ),
    ],
    output: OutputOpt = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON (findings included).")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Plot the curves in the terminal.")] = True,
    log_scale: Annotated[bool, typer.Option("--log", help="Loss plots on a log scale.")] = False,
    compare: Annotated[
        bool, typer.Option("--compare", help="Runs side by side (the default with several runs).")
    ] = False,
    png: Annotated[
        Path | None,
        typer.Option("--png", metavar="DIR", help="Also write the plots as PNG files in DIR (needs matplotlib)."),
    ] = None,
    samples: Annotated[
        bool,
        typer.Option("--samples", help="Also show the sample answers (first, middle, last sampling) and their scores."),
    ] = False,
) -> None:
    """Diagnose a run: convergence, overfitting, learning rate, stability and efficiency, with
    ranked recommendations and the exact llmc train change for each.

    Examples:

      llmc analyze run-42

      llmc analyze run-41 run-42 --no-plots

      llmc analyze run-42 --json | jq '.findings[0]'

      llmc analyze run-42 --png plots/

      llmc analyze run-42 --samples
    """
    from llmc_cli.analyze import analyze_run
    from llmc_cli.analyze.render import config_diff, render, render_compare
    from llmc_cli.analyze.samples import read_samples, render_samples

    analyses = [analyze_run(run, output) for run in runs]
    side_by_side = len(analyses) > 1 or compare
    if png is not None:
        _write_pngs(analyses, png, side_by_side, log_scale)
    if as_json:
        reports = [a.to_json() for a in analyses]
        if samples:
            for report, analysis in zip(reports, analyses, strict=True):
                history = read_samples(analysis.records.run_dir)
                report["samples"] = history.to_json() if history else None
        if not side_by_side:
            print(json.dumps(reports[0], indent=2, default=str))
        else:
            print(json.dumps({"runs": reports, "config_diff": config_diff(analyses)}, indent=2, default=str))
        return
    console = Console()
    if not side_by_side:
        render(console, analyses[0], plots, log_scale)
    else:
        render_compare(console, analyses, plots, log_scale)
        for analysis in analyses:
            render(console, analysis, plots=False)
    for analysis in analyses if samples else []:
        render_samples(console, read_samples(analysis.records.run_dir))


def _write_pngs(analyses, folder: Path, side_by_side: bool, log_scale: bool) -> None:
    from llmc_cli.analyze.charts import compare_charts, run_charts
    from llmc_cli.analyze.png import write_pngs

    written = []
    for analysis in analyses:
        prefix = f"{analysis.records.run_dir.name}-" if side_by_side else ""
        written += write_pngs(run_charts(analysis), folder, prefix, log_scale)
    if side_by_side:
        written += write_pngs(compare_charts(analyses), folder, "compare-", log_scale)
    print(f"Wrote {len(written)} plot(s) to {folder}/", file=sys.stderr)


runs_app = typer.Typer(help="The runs in an output folder.", no_args_is_help=True)


@runs_app.command("list")
def list_runs(
    output: OutputOpt = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """Every run under --output: status, steps, best eval loss, time."""
    from llmc_cli.analyze.records import load_run
    from llmc_cli.errors import ConfigError

    rows = []
    folders = sorted((p for p in output.glob("*") if (p / "config.json").is_file()), key=_run_order)
    for folder in folders:
        try:
            records = load_run(folder, output)
        except ConfigError:
            rows.append({"run": folder.name, "status": "no steps yet", "steps": 0})
            continue
        evals = [e["eval_loss"] for e in records.evals]
        rows.append({
            "run": folder.name, "status": records.status,
            "steps": records.steps[-1]["step"] if records.steps else 0, "total_steps": records.total_steps,
            "best_eval_loss": min(evals) if evals else None,
            "wall_time_s": (records.summary or {}).get("wall_time_s"),
            "preset": records.config.get("preset"), "model": records.config.get("model"),
        })  # fmt: skip
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    console = Console()
    if not rows:
        console.print(f"No runs in {output}/.")
        return
    table = Table(title=f"Runs in {output}/")
    for column in ("run", "status", "steps", "best eval", "time", "preset", "model"):
        table.add_column(column, overflow="fold")
    for row in rows:
        best = row.get("best_eval_loss")
        wall = row.get("wall_time_s")
        steps = f"{row['steps']}/{row.get('total_steps') or '?'}"
        shown = [f"{best:.4f}" if best is not None else "-", f"{wall:.0f} s" if wall else "-"]
        shown += [str(row.get("preset") or "-"), str(row.get("model") or "-")]
        table.add_row(row["run"], row["status"], steps, *shown)
    console.print(table)


def _run_order(path: Path) -> tuple:
    tail = path.name.rsplit("-", 1)[-1]
    return (0, int(tail), path.name) if tail.isdigit() else (1, 0, path.name)
