"""The curves a report plots, the same for the terminal (plotext) and for image files (--png)."""

from __future__ import annotations

from dataclasses import dataclass

from llmc_cli.analyze.curves import train_curve
from llmc_cli.analyze.records import RunRecords
from llmc_cli.analyze.report import Analysis

MAX_POINTS = 500  # per series: about two per braille column of the widest plot; more draws nothing new


@dataclass(frozen=True)
class Chart:
    name: str  # the image file's stem
    title: str
    series: list[tuple[str, list, list]]  # (label, steps, values)
    loss: bool = False  # --log applies


def thin(xs: list, ys: list, limit: int = MAX_POINTS) -> tuple[list, list]:
    """At most ``limit`` points: a long series becomes the means of consecutive bins."""
    if len(xs) <= limit:
        return xs, ys
    size = -(-len(xs) // limit)
    bins = range(0, len(xs), size)
    mean = lambda v, i: sum(v[i : i + size]) / len(v[i : i + size])  # noqa: E731
    return [mean(xs, i) for i in bins], [mean(ys, i) for i in bins]


def _train(records: RunRecords, label: str) -> tuple[str, list, list]:
    # One batch's loss is mostly noise on small batches: the smoothed curve is what can be read.
    curve = train_curve(records)
    if curve is None:
        return (label, *records.series("loss"))
    return (f"{label} (smoothed)", curve.xs, curve.smooth)


def run_charts(analysis: Analysis) -> list[Chart]:
    r = analysis.records
    charts = [Chart("loss", "loss", [_train(r, "train"), ("eval", *r.series("eval_loss", r.evals))], loss=True)]
    for key, title in (("lr", "learning rate"), ("grad_norm", "gradient norm"), ("tokens_per_s", "tokens/s")):
        charts.append(Chart(key, title, [(key, *r.series(key))]))
    return charts


def compare_charts(analyses: list[Analysis]) -> list[Chart]:
    names = [a.records.run_dir.name for a in analyses]
    train = [_train(a.records, name) for a, name in zip(analyses, names, strict=True)]
    evals = [(name, *a.records.series("eval_loss", a.records.evals)) for a, name in zip(analyses, names, strict=True)]
    return [Chart("train_loss", "train loss", train, loss=True), Chart("eval_loss", "eval loss", evals, loss=True)]
