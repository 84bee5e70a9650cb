"""Stability: loss spikes, skipped (non-finite) steps, rollbacks, the clip rate and the trend of
the gradient norm (finding: instability)."""

from __future__ import annotations

import statistics
from collections import Counter

from llmc_cli.analyze.findings import Finding, Section, clamp, fmt_lr

MEMORY_CAUSES = ("oom-gpu", "oom-cpu")
DIVERGED_CAUSES = ("diverged", "eval-diverged", "divergence")  # the learning rate's section judges these


def analyze_stability(records) -> Section:
    adjustments = [a for a in records.of("Adjustment") if a.get("cause") not in MEMORY_CAUSES]
    actions = Counter(str(a.get("action")) for a in adjustments)
    causes = Counter(str(a.get("cause")) for a in adjustments)
    rollbacks = records.of("RolledBack")
    unexplained = [a for a in adjustments if a.get("action") == "rolled-back" and a.get("cause") not in DIVERGED_CAUSES]
    spikes = causes.get("spike", 0) + sum(1 for w in records.of("TrainingWarning") if w.get("code") == "spike")
    skipped = sum(
        1 for a in adjustments if a.get("action") == "skipped-batch" and a.get("cause") not in DIVERGED_CAUSES
    )
    norms = [float(r["grad_norm"]) for r in records.steps if isinstance(r.get("grad_norm"), int | float)]
    section = Section("stability", "", [], {"spikes": spikes, "skipped_steps": skipped, "rollbacks": len(rollbacks),
                                            "adjustments": dict(actions)})  # fmt: skip
    if actions:
        done = ", ".join(f"{n} {a.replace('-', ' ')}" for a, n in actions.items())
        section.evidence.append(f"engine actions: {done}")
    for rollback in rollbacks[:3]:
        section.evidence.append(f"rolled back from step {rollback.get('from_step')} to step {rollback.get('step')}")
    if len(norms) >= 8:
        quarter = max(2, len(norms) // 4)
        first, last = statistics.median(norms[:quarter]), statistics.median(norms[-quarter:])
        section.figures["grad_norm"] = {"first_quarter": round(first, 4), "last_quarter": round(last, 4)}
        section.evidence.append(f"gradient norm median {first:.3g} in the first quarter, {last:.3g} in the last")
    trouble = spikes + skipped + len(unexplained)
    if trouble:
        lr = float(records.config.get("lr") or 0)
        section.verdict = f"unstable: {spikes} spike(s), {skipped} skipped step(s), {len(unexplained)} rollback(s)"
        section.findings.append(Finding(
            "instability", section.verdict.removeprefix("unstable: "),
            "; ".join(section.evidence[:3]) or section.verdict,
            f"--lr {fmt_lr(lr / 2)}" if lr else "a lower --lr", clamp(0.4 + 0.15 * trouble)))  # fmt: skip
    elif rollbacks:
        section.verdict = "the loss diverged and was rolled back (see the learning rate)"
    else:
        section.verdict = "stable: no spikes, skipped steps or rollbacks"
    return section
