"""The loss curves every section reads, with how much of each change is noise.

A train step's loss is one batch's: it moves with the batch as much as with training (a few
percent per step on GSM8K), so the train curve is judged on means over windows, and a change
counts only when it is well above the noise (three standard errors). The evaluation loss is
computed on the same held-out set each time, so its changes are real; where a run has
evaluations, they decide, and the train curve is the fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmc_cli.analyze.records import RunRecords

MIN_STEPS = 8
MIN_EVALS = 3
MAX_BINS = 2000


def smooth(values: list[float], window: int) -> list[float]:
    """A centred running median (robust to single spikes), same length as ``values``."""
    import numpy as np

    if window <= 1 or len(values) < window:
        return list(values)
    half = window // 2
    padded = np.pad(np.asarray(values, dtype=float), half, mode="reflect")  # "edge" would let the end value win
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, window), axis=1).tolist()


def smooth_long(xs: list[int], values: list[float], window: int) -> list[float]:
    """:func:`smooth` for any length: a long run (more than MAX_BINS steps) is averaged into bins
    first, smoothed, and read back at each step, so 100,000 steps cost what 2,000 do."""
    import numpy as np

    if len(values) <= MAX_BINS:
        return smooth(values, window)
    size = -(-len(values) // MAX_BINS)
    usable = len(values) // size * size
    means = np.asarray(values[:usable], dtype=float).reshape(-1, size).mean(axis=1)
    centres = np.asarray(xs[:usable], dtype=float).reshape(-1, size).mean(axis=1)
    binned = smooth(means.tolist(), max(5, (window // size) | 1))
    return np.interp(np.asarray(xs, dtype=float), centres, binned).tolist()


def window_for(n: int) -> int:
    """An odd smoothing window: about n / 10, between 5 and 101."""
    return max(5, min(101, n // 10)) | 1


@dataclass(frozen=True)
class TrainCurve:
    xs: list[int]
    ys: list[float]
    smooth: list[float]
    window: int
    noise: float  # robust standard deviation of one step's loss around the smoothed curve
    start: float  # mean of the first ``window`` steps
    final: float  # mean of the last ``window`` steps
    lowest: float  # of the smoothed curve
    step_90: int  # first step where the smoothed curve had made 90% of its drop
    tail_change: float  # relative change over the last quarter (least-squares line)
    tail_significant: bool  # that change is beyond three standard errors

    @property
    def drop(self) -> float:
        return self.start - self.lowest

    @property
    def relative_drop(self) -> float:
        return self.drop / self.start if self.start > 0 else 0.0

    @property
    def change(self) -> float:
        """Relative change from the start to the end (negative: the loss fell)."""
        return (self.final - self.start) / self.start if self.start > 0 else 0.0

    def significant(self, delta: float) -> bool:
        """Whether a difference of two window means is beyond three standard errors."""
        return abs(delta) > 3 * self.noise * math.sqrt(2 / self.window)


def train_curve(records: RunRecords) -> TrainCurve | None:
    """The train loss and its landmarks (None below MIN_STEPS steps); computed once per records."""
    if "train" not in records.cache:
        records.cache["train"] = _train_curve(records)
    return records.cache["train"]


def _train_curve(records: RunRecords) -> TrainCurve | None:
    import numpy as np

    xs, ys = records.series("loss")
    if len(ys) < MIN_STEPS:
        return None
    window = min(window_for(len(ys)), len(ys) // 2)
    window -= 1 - window % 2  # odd, so the running median stays centred and the same length
    sm = smooth_long(xs, ys, window)
    y, s = np.asarray(ys), np.asarray(sm)
    noise = 1.4826 * float(np.median(np.abs(y - s)))
    start, final = float(y[:window].mean()), float(y[-window:].mean())
    low = float(s.min())
    drop = start - low
    below = np.nonzero(s <= start - 0.9 * drop)[0] if drop > 0 else []
    i90 = int(below[0]) if len(below) else len(sm) - 1
    quarter = max(window, len(ys) // 4)
    tx, ty = np.asarray(xs[-quarter:], dtype=float), y[-quarter:]
    var = float(((tx - tx.mean()) ** 2).sum())
    slope = float(((tx - tx.mean()) * (ty - ty.mean())).sum()) / var if var else 0.0
    slope_se = noise / math.sqrt(var) if var else math.inf
    tail = slope * float(tx[-1] - tx[0]) / abs(final) if final else 0.0
    return TrainCurve(xs, ys, sm, window, noise, start, final, low, xs[i90], tail, abs(slope) > 3 * slope_se)


@dataclass(frozen=True)
class EvalCurve:
    steps: list[int]  # after step 0
    losses: list[float]
    base: float | None  # the step-0 evaluation (the model before training), when there was one

    @property
    def first(self) -> float:
        return self.base if self.base is not None else self.losses[0]

    @property
    def best(self) -> tuple[int, float]:
        i = min(range(len(self.losses)), key=lambda k: (self.losses[k], self.steps[k]))
        return self.steps[i], self.losses[i]

    @property
    def relative_drop(self) -> float:
        """How far the best evaluation is below the first (the base model's when evaluated)."""
        return (self.first - self.best[1]) / self.first if self.first > 0 else 0.0

    def late_gain(self, fraction: float = 0.25) -> float:
        """The share of the run's eval improvement made in its last ``fraction`` of steps."""
        total = self.first - self.best[1]
        if total <= 0:
            return 0.0
        cutoff = self.steps[-1] - fraction * self.steps[-1]
        before = [loss for step, loss in zip(self.steps, self.losses, strict=True) if step <= cutoff]
        reference = before[-1] if before else self.first
        return (reference - self.losses[-1]) / total

    def step_90(self) -> int:
        """The first evaluation that had made 90% of the best improvement."""
        total = self.first - self.best[1]
        if total <= 0:
            return self.steps[-1]
        return next(s for s, v in zip(self.steps, self.losses, strict=True) if v <= self.first - 0.9 * total)


def eval_curve(records: RunRecords) -> EvalCurve | None:
    """The evaluations after step 0 (None below MIN_EVALS of them); computed once per records."""
    if "eval" not in records.cache:
        records.cache["eval"] = _eval_curve(records)
    return records.cache["eval"]


def _eval_curve(records: RunRecords) -> EvalCurve | None:
    evals = [(int(e["step"]), float(e["eval_loss"])) for e in records.evals if math.isfinite(e["eval_loss"])]
    base = next((loss for step, loss in evals if step == 0), None)
    after = [(s, v) for s, v in evals if s > 0]
    if len(after) < MIN_EVALS:
        return None
    return EvalCurve([s for s, _ in after], [v for _, v in after], base)
