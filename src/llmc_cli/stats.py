"""Plain statistics over a run's recent history, shared by the engine's controls and the monitors.

One definition of each test, so the loop (which acts) and the detectors (which only tell the
user) can never disagree about what a spike, an oscillation or an exploding gradient is.
Pure functions of lists of floats; nothing here imports torch or the rest of llmc.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

SPIKE_Z = 8.0  # robust z-score a value must also exceed to be a spike, not noise
MIN_HISTORY = 10  # below this, statistics are too noisy to judge
EXPLOSION_FACTOR = 10.0  # a gradient norm this many times the recent median has exploded ...
EXPLOSION_FLOOR = 1.0  # ... if it is also above this (tiny norms may jump without harm)
OSCILLATION_FLIPS = 0.85  # share of consecutive loss changes that reverse direction
OSCILLATION_SPREAD = 0.1  # standard deviation of the window over its mean


def finite(*values: float) -> bool:
    """True when every value is a finite number (no NaN, no infinity)."""
    return all(math.isfinite(v) for v in values)


def robust_z(values: Sequence[float], x: float) -> float:
    """How far ``x`` sits from the median of ``values``, in robust standard deviations (MAD)."""
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    scale = 1.4826 * mad or 1e-12
    return (x - median) / scale


def slope(values: Sequence[float]) -> float:
    """Least-squares slope per step."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(values)
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n)) or 1.0
    return num / den


def spike(recent: Sequence[float], value: float, ratio: float) -> dict[str, float] | None:
    """``value`` is a spike when it is above ``ratio`` x the median of ``recent`` and SPIKE_Z robust
    deviations away; returns the evidence, or None (also when history is too short to tell)."""
    if len(recent) < MIN_HISTORY or not math.isfinite(value):
        return None
    median = statistics.median(recent)
    z = robust_z(recent, value)
    if value > ratio * median and z > SPIKE_Z:
        return {"median": median, "robust_z": round(z, 2), "ratio": value / median if median else math.inf}
    return None


def explosion(norms: Sequence[float]) -> dict[str, float] | None:
    """The last gradient norm is EXPLOSION_FACTOR x the median of the ones before it (and above
    EXPLOSION_FLOOR); returns the evidence, or None."""
    if len(norms) < MIN_HISTORY + 1:
        return None
    before, last = list(norms)[:-1], norms[-1]
    median = statistics.median(before)
    if median > 0 and last > EXPLOSION_FACTOR * median and last > EXPLOSION_FLOOR:
        return {"grad_norm": last, "median": median}
    return None


def oscillation(losses: Sequence[float], window: int) -> dict[str, float] | None:
    """Over the last ``window`` losses, the loss zig-zags without going down: most consecutive
    changes flip sign, the spread is large and the trend is flat or rising. Evidence, or None."""
    if len(losses) < window:
        return None
    values = list(losses)[-window:]
    diffs = [b - a for a, b in zip(values, values[1:], strict=False)]
    flips = sum(1 for a, b in zip(diffs, diffs[1:], strict=False) if a * b < 0) / max(len(diffs) - 1, 1)
    spread = statistics.pstdev(values) / max(abs(statistics.fmean(values)), 1e-12)
    trend = slope(values)
    if flips > OSCILLATION_FLIPS and spread > OSCILLATION_SPREAD and trend >= 0:
        return {"sign_flip_fraction": round(flips, 3), "relative_spread": round(spread, 4), "slope": trend}
    return None
