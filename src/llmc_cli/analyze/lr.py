"""Learning-rate effectiveness: the loss drop in each phase of the schedule (warm-up, peak,
decay), the engine's own LR cuts, and the signs of a rate too high (the loss rose, recovery had
to step in, most steps clipped) or too low (the loss barely moved, updates were tiny)."""

from __future__ import annotations

import statistics

from llmc_cli.analyze.convergence import LOW_UPDATE_RATIO
from llmc_cli.analyze.curves import EvalCurve, TrainCurve, eval_curve, train_curve
from llmc_cli.analyze.findings import DIVERGED_CAUSES, Finding, Section, clamp, fmt_lr
from llmc_cli.analyze.records import RunRecords

HIGH_UPDATE_RATIO = 2e-2  # SmolLM2-135M on GSM8K: 6e-3 at LR 3e-4, 1e-2 at 6.7e-4, 5e-2 at 1.1e-3
TROUBLE_CAUSES = ("spike", "non-finite", "instability")


def _phases(lrs: list[float]) -> list[tuple[str, int, int]]:
    """(name, first index, last index) of warm-up (rising), peak and decay."""
    peak = max(lrs)
    top = next(i for i, v in enumerate(lrs) if v >= 0.98 * peak)
    end_peak = max(i for i, v in enumerate(lrs) if v >= 0.98 * peak)
    phases = [("warm-up", 0, top)] if top > 0 else []
    phases.append(("peak", top, end_peak))
    if end_peak < len(lrs) - 1:
        phases.append(("decay", end_peak, len(lrs) - 1))
    return phases


def analyze_lr(records: RunRecords) -> Section:
    xs, lrs = records.series("lr")
    c, e = train_curve(records), eval_curve(records)
    lr = float(records.config.get("lr") or (max(lrs) if lrs else 0.0))
    section = Section("learning rate", "", [], {"lr": lr})
    if c is None or not lrs:
        section.verdict, section.judged = "too few steps to judge the learning rate", False
        return section
    loss_at = dict(zip(c.xs, c.ys, strict=True))  # a step whose loss was not finite has an LR but no loss
    for name, first, last in _phases(lrs):
        losses = [loss_at[x] for x in xs[first : last + 1] if x in loss_at]
        if not losses:
            continue
        k = max(1, min(c.window, len(losses) // 3))
        before, after = statistics.fmean(losses[:k]), statistics.fmean(losses[-k:])
        change = (after - before) / c.start if c.start else 0.0
        noise = "" if abs(after - before) > 3 * c.noise * (2 / k) ** 0.5 else " (within the noise)"
        section.evidence.append(
            f"{name}: steps {xs[first]}-{xs[last]}, LR {lrs[first]:.2g} -> {lrs[last]:.2g}, "
            f"train loss {change:+.1%}{noise}"
        )
    cuts = [a for a in records.of("Adjustment") if a.get("cause") in TROUBLE_CAUSES]
    plateau_cuts = [a for a in records.of("Adjustment") if a.get("cause") == "plateau"]
    rollbacks = records.of("RolledBack")
    clipped = [r for r in records.steps if r.get("clip_threshold") and r.get("grad_norm", 0) > r["clip_threshold"]]
    clip_rate = len(clipped) / len(records.steps)
    ratio = records.median_update_ratio()
    section.figures.update({"clip_rate": round(clip_rate, 3), "median_update_ratio": ratio,
                            "engine_lr_cuts": len(cuts), "plateau_lr_cuts": len(plateau_cuts),
                            "rollbacks": len(rollbacks)})  # fmt: skip
    if ratio is not None:
        section.evidence.append(f"median update ratio |ΔW|/|W| {ratio:.1e}; {clip_rate:.0%} of steps clipped")
    if plateau_cuts:
        at = ", ".join(str(a.get("step")) for a in plateau_cuts[:5])
        section.evidence.append(f"the engine halved the LR {len(plateau_cuts)} time(s) as the eval loss stalled "
                                f"(step {at})")  # fmt: skip
    if cuts:
        at = ", ".join(f"{a.get('step')} ({a.get('cause')})" for a in cuts[:5])
        section.evidence.append(f"recovery cut the LR {len(cuts)} time(s): step {at}")

    diverged = [a for a in records.of("Adjustment") if a.get("cause") in DIVERGED_CAUSES]
    high = _too_high_signs(c, e, cuts, rollbacks, clip_rate, len(records.steps), ratio)
    scales = [float(a["settings"]["lr_scale"]) for a in diverged if (a.get("settings") or {}).get("lr_scale")]
    if diverged:
        at = ", ".join(str(a.get("step")) for a in diverged[:5])
        settled = f"; it went on at x{scales[-1]:g} of the rate" if scales else ""
        high.insert(0, (0.85, f"the loss diverged {len(diverged)} time(s) (step {at}) and the engine rolled back "
                              f"with a lower rate{settled}"))  # fmt: skip
    tiny_updates = ratio is not None and ratio < LOW_UPDATE_RATIO
    drop = e.relative_drop if e is not None else c.relative_drop
    if high:
        confidence = clamp(max(h[0] for h in high) + 0.1 * (len(high) - 1))
        factor = 10 if confidence >= 0.8 else 3
        fix = (
            f"--lr {fmt_lr(lr * scales[-1])} (the rate the run recovered at)"
            if scales
            else f"--lr {fmt_lr(lr / factor)}"
        )
        section.verdict = "too high"
        section.findings.append(Finding(
            "lr_too_high", f"the learning rate {lr:.2g} is too high", "; ".join(h[1] for h in high), fix,
            confidence))  # fmt: skip
    elif tiny_updates and drop < 0.03 and len(records.steps) >= 20:
        factor = 10 if ratio < LOW_UPDATE_RATIO / 3 else 3
        measured = "eval" if e is not None else "train"
        section.verdict = "too low"
        section.findings.append(Finding(
            "lr_too_low", f"the learning rate {lr:.2g} is too low",
            f"the {measured} loss fell {drop:.1%} in {len(records.steps)} steps; median update ratio {ratio:.1e} "
            f"(below {LOW_UPDATE_RATIO:.0e})", f"--lr {fmt_lr(lr * factor)}",
            clamp(0.6 + (0.03 - drop) / 0.1 + (0.1 if factor == 10 else 0))))  # fmt: skip
    else:
        section.verdict = "effective: the loss fell without the engine having to step in"
    warm = next((p for p in _phases(lrs) if p[0] == "warm-up"), None)
    smooth_at = dict(zip(c.xs, c.smooth, strict=True))
    if warm is not None and high and xs[warm[1]] in smooth_at and xs[warm[2]] in smooth_at:
        rise = smooth_at[xs[warm[2]]] - smooth_at[xs[warm[1]]]
        if rise > 0 and c.significant(rise):
            section.evidence.append("the loss rose during warm-up: a longer warm-up (warmup_ratio) may help")
    return section


def _too_high_signs(
    c: TrainCurve, e: EvalCurve | None, cuts, rollbacks, clip_rate: float, steps: int, ratio: float | None
) -> list[tuple[float, str]]:
    """(confidence, evidence) for each sign that the rate was too high. An eval loss that did not
    improve points at the rate only with large updates (``ratio``, the median |ΔW|/|W|): with tiny
    ones the rate is too low, with ordinary ones the adapter or the data is the suspect."""
    high = []
    # The eval loss fell well below the base model's and rose again while the train loss kept falling:
    # that is overfitting (its own section), not a rate too high.
    overfit_like = (
        e is not None and e.base is not None and e.best[1] < e.base * 0.98 and c.final < c.start
        and c.significant(c.start - c.final)
    )  # fmt: skip
    if e is not None and e.base is not None and e.losses[-1] > e.base * 1.01 and not overfit_like:
        high.append((0.9, f"the eval loss ended above the base model's ({e.base:.4f} -> {e.losses[-1]:.4f})"))
    elif e is not None and e.base is not None and e.best[1] > e.base * 0.995 and (ratio or 0) > HIGH_UPDATE_RATIO:
        high.append((0.8, f"no evaluation beat the base model ({e.base:.4f}; best {e.best[1]:.4f}) though each "
                          f"step changed the adapter by {ratio:.1e} of its size"))  # fmt: skip
    elif e is not None and e.base is not None and e.losses[0] > e.base * 1.01:
        rise = e.losses[0] / e.base - 1
        high.append((0.4, f"the first evaluation (step {e.steps[0]}) was {rise:+.1%} above the base model's "
                          "before the loss recovered (a longer warm-up may be enough)"))  # fmt: skip
    if c.final > c.start and c.significant(c.final - c.start) and c.change > 0.02:
        high.append((0.9, f"the train loss ended {c.change:+.0%} above where it started"))
    if (cuts or rollbacks) and high:  # alone, interventions are instability's evidence (a bad batch, a spike)
        high.append((clamp(0.5 + 0.1 * (len(cuts) + len(rollbacks))),
                     f"the engine stepped in {len(cuts) + len(rollbacks)} time(s) (LR cuts, rollbacks)"))  # fmt: skip
    if clip_rate > 0.5 and steps >= 10:
        high.append((0.4, f"{clip_rate:.0%} of steps had their gradient clipped"))
    return high
