"""Convergence: how far the loss fell, how fast, whether it was still falling at the end, and
when it stopped improving (findings: too_few_steps, plateau, underfitting). The evaluations
decide where the run has them; the train curve (noise-aware) where it has not."""

from __future__ import annotations

import math

from llmc_cli.analyze.curves import EvalCurve, TrainCurve, eval_curve, train_curve
from llmc_cli.analyze.findings import Finding, Section, clamp
from llmc_cli.analyze.records import RunRecords

LOW_UPDATE_RATIO = 3e-4  # median |ΔW|/|W| per step below this: the learning rate is the suspect, not capacity


def fit_decay(xs: list[float], ys: list[float]) -> tuple[float, float, float] | None:
    """Least-squares ``y = a + b * exp(-(x - x0) / tau)`` over a log grid of tau; (a, b, tau)."""
    import numpy as np

    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    span = float(x[-1] - x[0])
    if span <= 0:
        return None
    best = None
    for tau in np.geomspace(span / 50, span * 5, 60):
        basis = np.stack([np.ones_like(x), np.exp(-(x - x[0]) / tau)], axis=1)
        coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
        error = float(((basis @ coef - y) ** 2).sum())
        if best is None or error < best[0]:
            best = (error, float(coef[0]), float(coef[1]), float(tau))
    return best[1:] if best is not None else None


def analyze_convergence(records: RunRecords) -> Section:
    c, e = train_curve(records), eval_curve(records)
    if c is None:
        n = len(records.steps)
        return Section("convergence", f"only {n} train steps: too few to judge convergence", judged=False)
    last = c.xs[-1]
    evidence = [
        f"train loss {c.start:.4f} over the first {c.window} steps -> {c.final:.4f} over the last {c.window} "
        f"(lowest {c.lowest:.4f} smoothed; one step's loss varies by ±{c.noise:.3f})",
        f"over the last quarter the train loss changed {c.tail_change:+.1%}"
        + ("" if c.tail_significant else " (within the noise)"),
    ]
    figures = {"start": round(c.start, 5), "final": round(c.final, 5), "lowest": round(c.lowest, 5),
               "noise": round(c.noise, 5), "window": c.window, "relative_drop": round(c.relative_drop, 4),
               "step_90": c.step_90, "tail_change": round(c.tail_change, 4)}  # fmt: skip
    stride = -(-len(c.xs) // 2000)  # the smoothed curve has no detail between 2,000 points
    fitted = fit_decay(c.xs[::stride], c.smooth[::stride])
    if fitted is not None:
        a, b, tau = fitted
        left = b * math.exp(-(last - c.xs[0]) / tau)
        figures["fit"] = {"floor": round(a, 5), "amplitude": round(b, 5), "tau_steps": round(tau, 1),
                          "left_at_end": round(left, 5)}  # fmt: skip
        evidence.append(f"fits {a:.3f} + {b:.3f}·exp(-step/{tau:.0f}): {left:+.4f} above its floor at the end")
    if e is not None:
        gain = e.late_gain()
        figures["eval"] = {"first": round(e.first, 5), "best": round(e.best[1], 5), "best_step": e.best[0],
                           "relative_drop": round(e.relative_drop, 4), "late_gain": round(gain, 3)}  # fmt: skip
        late = f"{gain:.0%} of that gain came in the last quarter" if gain >= 0 else "it rose in the last quarter"
        evidence.append(f"eval loss {e.first:.4f} -> best {e.best[1]:.4f} at step {e.best[0]} "
                        f"({-e.relative_drop:+.1%}); {late}")  # fmt: skip
    section = Section("convergence", "", evidence, figures)
    _judge(section, records, c, e)
    return section


def _more_training(records: RunRecords, last: int) -> str:
    if records.config.get("max_steps"):
        return f"--max-steps {2 * last}"
    return f"--epochs {2 * float(records.config.get('epochs') or 1):g}"


def _judge(section: Section, records: RunRecords, c: TrainCurve, e: EvalCurve | None) -> None:
    last = c.xs[-1]
    still_falling = (
        e.late_gain() > 0.25 and e.relative_drop > 0.005 and e.best[0] == e.steps[-1]
        if e is not None
        else c.tail_significant and c.tail_change < -0.02
    )
    if still_falling:
        how = (f"{e.late_gain():.0%} of the eval improvement came in the last quarter" if e is not None
               else f"the train loss fell {c.tail_change:+.1%} over the last quarter")  # fmt: skip
        section.verdict = "still improving at the end: more training would lower the loss"
        confidence = clamp(0.4 + (e.late_gain() if e is not None else 0.3))
        section.findings.append(Finding("too_few_steps", f"the loss was still falling at step {last}", how,
                                        _more_training(records, last), confidence))  # fmt: skip
        return
    flat_at, drop = (e.step_90(), e.relative_drop) if e is not None else (c.step_90, c.relative_drop)
    # Flat: the second half added under a tenth of the gain AND under 1 % of the loss (a large first drop,
    # such as a base model learning the answer format, makes a tenth of the gain still worth having).
    flat_tail = (
        e.late_gain(0.5) < 0.1 and e.late_gain(0.5) * (e.first - e.best[1]) < 0.01 * e.best[1]
        if e is not None
        else not c.tail_significant
    )
    if drop >= 0.01 and flat_tail and flat_at <= 0.4 * last and len(c.xs) >= 30:
        stop = max(1, round(flat_at * 1.5))
        section.verdict = f"converged by step {flat_at}: the rest of the run bought little"
        section.findings.append(Finding(
            "plateau", f"the loss flattened by step {flat_at} and stayed flat to step {last}",
            f"90% of the improvement made by step {flat_at} ({flat_at / last:.0%} of the run)",
            f"--max-steps {stop} (the same loss for {1 - stop / last:.0%} less compute), or --preset bestaccuracy "
            "for a lower floor", clamp(1.2 - 2 * flat_at / last)))  # fmt: skip
        return
    ratio = records.median_update_ratio()
    # Underfitting: neither loss moved (a train loss that fell alone is the overfitting section's).
    if drop < 0.01 and c.relative_drop < 0.05 and len(c.xs) >= 20 and (ratio is None or ratio >= LOW_UPDATE_RATIO):
        section.verdict = f"underfitting: the loss fell only {drop:.1%}"
        preset = records.config.get("preset")
        fix = (
            "--preset bestaccuracy"
            if preset != "bestaccuracy"
            else f"--lora-r {2 * int(records.config.get('lora_r') or 8)}"
        )
        measured = f"{'eval' if e is not None else 'train'} loss {drop:.1%} lower"
        if ratio is not None:
            measured += f"; median update ratio |ΔW|/|W| {ratio:.1e} (not small)"
        section.findings.append(Finding(
            "underfitting", f"the loss fell only {drop:.1%} in {last} steps with updates of a normal size",
            measured, f"{fix} (more adapter capacity); check the data (llmc train --dry-run)", 0.5))  # fmt: skip
        return
    section.verdict = f"converged: {drop:.1%} lower, flat at the end"
