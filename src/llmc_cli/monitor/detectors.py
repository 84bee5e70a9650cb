"""Training-issue detection over a recent window of metrics.

Each detector looks at the recent history and returns a :class:`Finding` (what, the numbers
behind it, what to change) or None. Detectors are pure functions of the history, so they
are tested on synthetic curves; :class:`IssueMonitor` feeds them from events and emits each
finding as a ``TrainingWarning``, at most once per detector per ``cooldown`` steps.

Windows and thresholds are chosen so that a clean run (noisy but decreasing loss, steady
gradients and throughput) raises nothing; the tests include such curves.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmc_cli import stats
from llmc_cli.events import EvalEnded, Event, EventBus, StepEnded, SystemSampled, TrainingWarning
from llmc_cli.stats import MIN_HISTORY

WINDOW = 50  # steps of history the detectors see
LONG_WINDOW = 200  # for plateaus: slow trends need many noisy steps to tell from noise
# A spike worth telling the user about; the engine itself rolls back only above the run's
# spike_threshold (3x by default), with the same test (stats.spike).
WARN_SPIKE_RATIO = 1.5


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    suggestion: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class History:
    """Recent metrics, newest last."""

    steps: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    losses: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    long_losses: deque = field(default_factory=lambda: deque(maxlen=LONG_WINDOW))
    grad_norms: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    throughput: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    lrs: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    evals: list[tuple[int, float, float | None]] = field(default_factory=list)  # (step, eval, train loss then)
    rss_mb: deque = field(default_factory=lambda: deque(maxlen=120))
    first_losses: list[float] = field(default_factory=list)  # the run's first WINDOW losses


# ---------------------------------------------------------------------------- detectors
def non_finite_loss(h: History) -> Finding | None:
    if h.losses and not stats.finite(h.losses[-1]):
        return Finding(
            "nan_loss",
            f"The training loss is {h.losses[-1]} at step {h.steps[-1]}.",
            "Lower --lr, keep --max-grad-norm at 1.0, or use fp32/bf16 instead of fp16.",
            {"step": h.steps[-1], "loss": h.losses[-1]},
        )
    return None


def loss_spike(h: History) -> Finding | None:
    if not h.losses:
        return None
    last = h.losses[-1]
    found = stats.spike(list(h.losses)[:-1], last, WARN_SPIKE_RATIO)
    if found is None:
        return None
    median = found["median"]
    return Finding(
        "loss_spike",
        f"Loss spiked to {last:.4f} at step {h.steps[-1]} ({last / median:.1f}x the recent median "
        f"{median:.4f}, robust z {found['robust_z']:.1f}).",
        "If it repeats, lower --lr or --max-grad-norm; check the batch's data for broken examples.",
        {"step": h.steps[-1], "loss": last, "median": median, "robust_z": found["robust_z"]},
    )


def plateau(h: History, min_gain: float = 0.01) -> Finding | None:
    """After progress earlier in the run, the last LONG_WINDOW steps improved by less than ``min_gain``.

    The halves' means are compared with their noise: the gain must be below ``min_gain`` even
    at two standard errors, so a noisy but improving curve is not called flat.
    """
    if len(h.long_losses) < LONG_WINDOW or len(h.first_losses) < MIN_HISTORY:
        return None
    losses = list(h.long_losses)
    half = len(losses) // 2
    older, newer = statistics.fmean(losses[:half]), statistics.fmean(losses[half:])
    start = statistics.fmean(h.first_losses[:MIN_HISTORY])
    progressed = start - older > 5 * min_gain * start
    scale = max(abs(older), 1e-12)
    gain = (older - newer) / scale
    noise = statistics.pstdev(losses[half:]) * math.sqrt(2 / half) / scale
    if progressed and gain + 2 * noise < min_gain:
        return Finding(
            "plateau",
            f"Train loss has stopped improving: mean {older:.4f} -> {newer:.4f} over the last {len(losses)} steps.",
            "Training may be done (enable early stopping), or lower the learning rate to refine further.",
            {"older_mean": older, "newer_mean": newer, "relative_gain": round(gain, 5)},
        )
    return None


def exploding_gradients(h: History) -> Finding | None:
    found = stats.explosion(h.grad_norms)
    if found is None:
        return None
    last, median = found["grad_norm"], found["median"]
    return Finding(
        "exploding_gradients",
        f"Gradient norm {last:.3g} at step {h.steps[-1]} is {last / median:.0f}x the recent median {median:.3g}.",
        "Lower --lr or --max-grad-norm; with fp16, switch to bf16 or fp32.",
        {"step": h.steps[-1], **found},
    )


def vanishing_gradients(h: History, floor: float = 1e-7) -> Finding | None:
    if len(h.grad_norms) < MIN_HISTORY or max(h.grad_norms) >= floor:
        return None
    return Finding(
        "vanishing_gradients",
        f"Gradient norms have stayed below {floor:g} for {len(h.grad_norms)} steps: the adapter is not learning.",
        "Check that the labels are not all masked, and that LoRA targets real layers (--target-modules).",
        {"max_grad_norm_in_window": max(h.grad_norms)},
    )


def lr_too_high(h: History) -> Finding | None:
    """The loss zig-zags without going down: consecutive changes keep flipping sign."""
    found = stats.oscillation(h.losses, WINDOW)
    if found is None:
        return None
    return Finding(
        "lr_too_high",
        f"The loss oscillates without decreasing ({found['sign_flip_fraction']:.0%} of steps reverse direction, "
        f"spread {found['relative_spread']:.0%} of the mean).",
        f"Lower the learning rate (now {h.lrs[-1]:.2e}), e.g. by 3x.",
        found,
    )


def lr_too_low(h: History, min_change: float = 0.002) -> Finding | None:
    """The loss has hardly moved since the start of the run."""
    if len(h.first_losses) < WINDOW or len(h.losses) < WINDOW or h.steps[-1] > 3 * WINDOW:
        return None
    start = statistics.fmean(h.first_losses[:MIN_HISTORY])
    recent = statistics.fmean(list(h.losses)[-MIN_HISTORY:])
    change = (start - recent) / max(abs(start), 1e-12)
    if change < min_change:
        return Finding(
            "lr_too_low",
            f"The loss has barely moved in {h.steps[-1]} steps ({start:.4f} -> {recent:.4f}).",
            f"Raise the learning rate (now {h.lrs[-1]:.2e}), e.g. by 3x, or check the warmup length.",
            {"start_mean": start, "recent_mean": recent, "relative_change": round(change, 5)},
        )
    return None


def overfitting(h: History, rises: int = 2) -> Finding | None:
    """Eval loss rose at the last ``rises`` evaluations while train loss fell."""
    if len(h.evals) < rises + 1:
        return None
    recent = h.evals[-(rises + 1) :]
    eval_up = all(b[1] > a[1] for a, b in zip(recent, recent[1:], strict=False))
    trains = [t for _, _, t in recent]
    train_down = None not in trains and all(b < a for a, b in zip(trains, trains[1:], strict=False))
    if eval_up and train_down:
        best = min(h.evals, key=lambda e: e[1])
        return Finding(
            "overfitting",
            f"Eval loss rose {rises} times in a row ({recent[0][1]:.4f} -> {recent[-1][1]:.4f}) while train loss fell.",
            f"Use the best checkpoint (eval loss {best[1]:.4f} at step {best[0]}), fewer epochs, more data, "
            "or more LoRA dropout.",
            {"evals": [(s, e) for s, e, _ in recent], "best_step": best[0]},
        )
    return None


def throughput_drop(h: History, ratio: float = 0.5) -> Finding | None:
    if len(h.throughput) < MIN_HISTORY + 1:
        return None
    median, last = statistics.median(list(h.throughput)[:-1]), h.throughput[-1]
    if median > 0 and last < ratio * median:
        return Finding(
            "throughput_drop",
            f"Throughput fell to {last:,.0f} tokens/s at step {h.steps[-1]} from a recent median of {median:,.0f}.",
            "Another process may be using the machine, or memory is swapping; check the system panel.",
            {"tokens_per_s": last, "median": median},
        )
    return None


MEMORY_WARMUP_STEPS = 10  # memory samples count from this optimizer step on


def memory_creep(h: History, growth: float = 0.25, min_mb: float = 256.0) -> Finding | None:
    """Process memory keeps rising across the window (a leak, or an unbounded cache)."""
    if len(h.rss_mb) < 30:
        return None
    values = list(h.rss_mb)
    third = len(values) // 3
    early, late = statistics.fmean(values[:third]), statistics.fmean(values[-third:])
    rising = all(b >= a - 1.0 for a, b in zip(values[third:], values[third + 1 :], strict=False))
    if late - early > max(min_mb, growth * early) and rising:
        return Finding(
            "memory_creep",
            f"Process memory keeps growing: {early:,.0f} MB -> {late:,.0f} MB.",
            "If it goes on, the run will run out of memory; report it with the run's events.jsonl.",
            {"early_mb": early, "late_mb": late},
        )
    return None


STEP_DETECTORS: tuple[Callable[[History], Finding | None], ...] = (
    non_finite_loss,
    loss_spike,
    exploding_gradients,
    vanishing_gradients,
    plateau,
    lr_too_high,
    lr_too_low,
    throughput_drop,
)


class IssueMonitor:
    """An event subscriber that runs the detectors and emits their findings as warnings."""

    def __init__(self, bus: EventBus, cooldown: int = WINDOW) -> None:
        self.bus = bus
        self.cooldown = cooldown
        self.history = History()
        self._last_fired: dict[str, int] = {}

    def __call__(self, event: Event) -> None:
        h = self.history
        if isinstance(event, StepEnded):
            h.steps.append(event.step)
            h.losses.append(event.loss)
            h.long_losses.append(event.loss)
            h.grad_norms.append(event.grad_norm)
            h.throughput.append(event.tokens_per_s)
            h.lrs.append(event.lr)
            if len(h.first_losses) < WINDOW:
                h.first_losses.append(event.loss)
            for detector in STEP_DETECTORS:
                self._report(detector(h), event.step)
        elif isinstance(event, EvalEnded):
            h.evals.append((event.step, event.eval_loss, h.losses[-1] if h.losses else None))
            self._report(overfitting(h), event.step)
        elif isinstance(event, SystemSampled):
            if not h.steps or h.steps[-1] < MEMORY_WARMUP_STEPS:
                return  # loading, the step-0 evaluation and the first steps allocate once: not a leak
            h.rss_mb.append(event.rss_mb)
            self._report(memory_creep(h), h.steps[-1] if h.steps else 0)

    def _report(self, finding: Finding | None, step: int) -> None:
        if finding is None:
            return
        last = self._last_fired.get(finding.code)
        if last is not None and step - last < self.cooldown:
            return
        self._last_fired[finding.code] = step
        self.bus.emit(TrainingWarning(finding.code, finding.message, finding.suggestion, finding.evidence, step))
