"""Stability: loss spikes, skipped (non-finite) steps, rollbacks, the clip rate and the trend of
the gradient norm (finding: instability)."""

from __future__ import annotations

import statistics
from collections import Counter

from llmc_cli.analyze.curves import train_curve
from llmc_cli.analyze.findings import DIVERGED_CAUSES, Finding, Section, clamp, fmt_lr

MEMORY_CAUSES = ("oom-gpu", "oom-cpu")


def analyze_stability(records) -> Section:
    adjustments = [a for a in records.of("Adjustment") if a.get("cause") not in MEMORY_CAUSES]
    actions = Counter(str(a.get("action")) for a in adjustments)
    rollbacks = records.of("RolledBack")
    unexplained = [a for a in adjustments if a.get("action") == "rolled-back" and a.get("cause") not in DIVERGED_CAUSES]
    skipped = [a for a in adjustments if a.get("action") == "skipped-batch" and a.get("cause") not in DIVERGED_CAUSES]
    loss_spikes, norm_spikes = _spikes(records)
    # A step the engine acted on and a spike seen in the records are one event, counted once.
    engine = {a.get("step") for a in adjustments if a.get("cause") in ("spike", "non-finite", "instability")}
    spike_steps = sorted(engine | set(loss_spikes) | set(norm_spikes))
    section = Section("stability", "", [], {"loss_spikes": loss_spikes, "grad_norm_spikes": norm_spikes,
                                            "skipped_steps": len(skipped), "rollbacks": len(rollbacks),
                                            "adjustments": dict(actions)})  # fmt: skip
    if loss_spikes:
        section.evidence.append(f"loss spikes (over 1.5x the smoothed loss) at step {_steps(loss_spikes)}")
    if norm_spikes:
        section.evidence.append(f"gradient-norm explosions (over 10x the recent median) at step {_steps(norm_spikes)}")
    if actions:
        done = ", ".join(f"{n} {a.replace('-', ' ')}" for a, n in actions.items())
        section.evidence.append(f"engine actions: {done}")
    for rollback in rollbacks[:3]:
        section.evidence.append(f"rolled back from step {rollback.get('from_step')} to step {rollback.get('step')}")
    norms = records.series("grad_norm")[1]
    if len(norms) >= 8:
        quarter = max(2, len(norms) // 4)
        first, last = statistics.median(norms[:quarter]), statistics.median(norms[-quarter:])
        section.figures["grad_norm"] = {"first_quarter": round(first, 4), "last_quarter": round(last, 4)}
        section.evidence.append(f"gradient norm median {first:.3g} in the first quarter, {last:.3g} in the last")
    trouble = len(spike_steps) + len(skipped) + len(unexplained)
    if trouble:
        lr = float(records.config.get("lr") or 0)
        summary = (f"{len(spike_steps)} spike(s) (step {_steps(spike_steps)}), {len(skipped)} skipped step(s), "
                   f"{len(unexplained)} rollback(s)")  # fmt: skip
        section.verdict = f"unstable: {summary}"
        section.findings.append(Finding(
            "instability", summary, "; ".join(section.evidence[:3]),
            f"--lr {fmt_lr(lr / 2)}" if lr else "a lower --lr", clamp(0.4 + 0.15 * trouble)))  # fmt: skip
    elif rollbacks:
        section.verdict = "the loss diverged and was rolled back (see the learning rate)"
    else:
        section.verdict = "stable: no spikes, skipped steps or rollbacks"
    return section


def _steps(steps: list[int]) -> str:
    shown = ", ".join(str(s) for s in steps[:6])
    return shown + (f" and {len(steps) - 6} more" if len(steps) > 6 else "")


def _spikes(records) -> tuple[list[int], list[int]]:
    """Steps whose loss was over 1.5x the smoothed curve and 6 noise widths above it, and steps whose
    gradient norm was over 10x the median of the 20 before (what the engine calls an explosion)."""
    c = train_curve(records)
    loss = []
    if c is not None:
        loss = [x for x, y, s in zip(c.xs, c.ys, c.smooth, strict=True) if y > 1.5 * s and y - s > 6 * c.noise]
    import numpy as np

    xs, norms = records.series("grad_norm")
    if len(norms) <= 20:
        return loss, []
    values = np.asarray(norms)
    recent = np.median(np.lib.stride_tricks.sliding_window_view(values[:-1], 20), axis=1)  # the 20 before each
    return loss, [xs[i] for i in (np.nonzero(values[20:] > 10 * recent)[0] + 20).tolist()]
