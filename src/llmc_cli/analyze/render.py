"""The analysis in the terminal: recommendations first, then each section with its evidence,
then plotext plots (train and eval loss, learning rate, gradient norm, throughput); and several
runs side by side (outcomes, the config keys that differ, loss curves overlaid)."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from llmc_cli.analyze.charts import Chart, compare_charts, run_charts, thin
from llmc_cli.analyze.report import Analysis


def render(console: Console, analysis: Analysis, plots: bool = True, log_scale: bool = False) -> None:
    r = analysis.records
    done = r.steps[-1]["step"] if r.steps else 0
    console.print(Text(f"Run {r.run_dir}: {r.status}, step {done} of {r.total_steps or '?'}", style="bold"))
    if analysis.findings:
        table = Table(title="Recommendations (most effect first)", show_lines=True)
        for column in ("#", "finding", "evidence", "change", "confidence"):
            table.add_column(column, overflow="fold")
        for number, finding in enumerate(analysis.findings, 1):
            table.add_row(str(number), f"{finding.kind}: {finding.summary}", finding.evidence, finding.fix,
                          f"{finding.confidence:.0%}")  # fmt: skip
        console.print(table)
    else:
        console.print("No problem found: nothing to change.")
    for section in analysis.sections:
        body = "\n".join(f"- {line}" for line in section.evidence) or "-"
        style = "dim" if not section.judged else ("yellow" if section.findings else "green")
        title = f"{section.name}: [{style}]{section.verdict}[/{style}]"
        console.print(Panel(body, title=title, title_align="left", expand=True), highlight=False)
    if plots:
        _plots(console, analysis, log_scale)


def _plots(console: Console, analysis: Analysis, log_scale: bool) -> None:
    for chart in run_charts(analysis):
        _chart(console, chart, log_scale)


def _chart(console: Console, chart: Chart, log_scale: bool = False) -> None:
    import plotext

    series = [(name, *thin(xs, ys)) for name, xs, ys in chart.series if len(xs) >= 2]
    if not series:
        return
    figure = plotext.figure
    figure.clear()
    figure.plot_size(max(40, min(console.width, 100)), 12)
    for name, xs, ys in series:
        figure.draw(figure.signal(xs, ys, marker="braille").lines().label(name))
    if log_scale and chart.loss:
        figure.yscale("log")
    figure.title(chart.title)
    figure.label("step", "x")
    console.print(Text.from_ansi(str(figure.build())))


def render_compare(console: Console, analyses: list[Analysis], plots: bool = True, log_scale: bool = False) -> None:
    """Several runs: an outcome table, the config keys whose values differ, overlaid loss curves."""
    outcome = Table(title="Runs side by side")
    for column in ("run", "status", "steps", "final train", "best eval", "time", "top finding"):
        outcome.add_column(column, overflow="fold")
    for a in analyses:
        data = a.to_json()
        wall = (a.records.summary or {}).get("wall_time_s")
        outcome.add_row(
            a.records.run_dir.name, data["status"], str(data["steps"]),
            f"{data['final_train_loss']:.4f}" if data["final_train_loss"] is not None else "-",
            f"{data['best_eval_loss']:.4f}" if data["best_eval_loss"] is not None else "-",
            f"{wall:.0f} s" if wall else "-", a.findings[0].kind if a.findings else "none",
        )  # fmt: skip
    console.print(outcome)
    differ = config_diff(analyses)
    if differ:
        table = Table(title="Config keys that differ")
        table.add_column("key")
        for a in analyses:
            table.add_column(a.records.run_dir.name, overflow="fold")
        for key, values in differ.items():
            table.add_row(key, *(str(v) for v in values))
        console.print(table)
    else:
        console.print("The runs' configs are the same (apart from paths and names).")
    if plots:
        for chart in compare_charts(analyses):
            _chart(console, chart, log_scale)


IGNORED_IN_DIFF = ("output", "run_name", "data_cache")


def config_diff(analyses: list[Analysis]) -> dict[str, list]:
    keys = dict.fromkeys(k for a in analyses for k in a.records.config)
    differ = {}
    for key in keys:
        if key in IGNORED_IN_DIFF:
            continue
        values = [a.records.config.get(key) for a in analyses]
        if any(v != values[0] for v in values):
            differ[key] = values
    return differ
