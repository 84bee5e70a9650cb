"""Training controls that answer the loop's questions from recent history.

- :class:`AdaptiveClipper`: the clipping threshold for the next step, from a running
  percentile of recent gradient norms, never above ``max_grad_norm``.
- :class:`DivergenceGuard`: is this step's loss non-finite, or a spike far above the recent
  median (robust z-score and a ratio, both required)?
- :class:`PlateauLR`: reduce-on-plateau over the evaluations, on top of the schedule, with a
  cooldown and a floor.
- :class:`EarlyStopping`: stop when the eval loss has not improved for ``patience`` evals.

Each is pure bookkeeping with ``state_dict`` / ``load_state_dict`` (JSON-friendly), so
checkpoints carry them and a resumed or rolled-back run decides exactly as before.
"""

from __future__ import annotations

import math
import queue
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from llmc_cli.monitor.detectors import robust_z


@dataclass
class AdaptiveClipper:
    """Clip at the ``percentile`` of the last ``window`` gradient norms, capped by ``max_norm``."""

    max_norm: float
    enabled: bool = True
    percentile: float = 95.0
    window: int = 100
    min_history: int = 20
    norms: list[float] = field(default_factory=list)

    def threshold(self) -> float:
        if not self.enabled or len(self.norms) < self.min_history:
            return self.max_norm
        ordered = sorted(self.norms)
        rank = min(len(ordered) - 1, max(0, math.ceil(self.percentile / 100 * len(ordered)) - 1))
        return min(self.max_norm, ordered[rank])

    def record(self, norm: float) -> None:
        """Add the pre-clipping norm of an applied step."""
        if math.isfinite(norm):
            self.norms = [*self.norms[-(self.window - 1) :], norm]

    def state_dict(self) -> dict[str, Any]:
        return {"norms": list(self.norms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.norms = [float(v) for v in state.get("norms", [])]


@dataclass
class DivergenceGuard:
    """Classifies a step's loss: ``"non-finite"``, ``"spike"`` or None (fine)."""

    spike_z: float = 8.0
    spike_ratio: float = 3.0
    window: int = 50
    min_history: int = 10
    losses: deque = field(default_factory=lambda: deque(maxlen=50))

    def __post_init__(self) -> None:
        self.losses = deque(self.losses, maxlen=self.window)

    def check(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return "non-finite"
        if len(self.losses) < self.min_history:
            return None
        median = statistics.median(self.losses)
        if loss > self.spike_ratio * median and robust_z(list(self.losses), loss) > self.spike_z:
            return "spike"
        return None

    def record(self, loss: float) -> None:
        self.losses.append(loss)

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = deque((float(v) for v in state.get("losses", [])), maxlen=self.window)


@dataclass
class PlateauLR:
    """Multiply the LR by ``factor`` after ``patience`` evals without an improvement of ``min_delta``.

    After a reduction, ``cooldown`` evals pass before counting again; the scale never goes
    below ``floor``. ``observe`` returns the factor to apply now (1.0 for none).
    """

    enabled: bool = True
    patience: int = 3
    factor: float = 0.5
    cooldown: int = 1
    floor: float = 0.05
    min_delta: float = 0.0
    scale: float = 1.0
    best: float = math.inf
    bad_evals: int = 0
    cooling: int = 0

    def observe(self, loss: float) -> float:
        if loss < self.best - self.min_delta:
            self.best, self.bad_evals = loss, 0
            return 1.0
        if self.cooling > 0:
            self.cooling -= 1
            return 1.0
        self.bad_evals += 1
        if self.bad_evals < self.patience:
            return 1.0
        applied = self.reduce()
        if applied != 1.0:
            self.bad_evals, self.cooling = 0, self.cooldown
        return applied

    def reduce(self) -> float:
        """Lower the scale by ``factor`` now (never below the floor); the factor applied."""
        if not self.enabled or self.scale <= self.floor:
            return 1.0
        new_scale = max(self.floor, self.scale * self.factor)
        applied, self.scale = new_scale / self.scale, new_scale
        return applied

    def state_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "best": _finite_or_none(self.best),
            "bad_evals": self.bad_evals,
            "cooling": self.cooling,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state.get("scale", 1.0))
        self.best = _none_to_inf(state.get("best"))
        self.bad_evals = int(state.get("bad_evals", 0))
        self.cooling = int(state.get("cooling", 0))


@dataclass
class EarlyStopping:
    """``observe`` returns True once ``patience`` evals in a row missed the best by ``min_delta``."""

    enabled: bool = False
    patience: int = 5
    min_delta: float = 0.0
    best: float = math.inf
    best_step: int | None = None
    bad_evals: int = 0

    def observe(self, step: int, loss: float) -> bool:
        if loss < self.best - self.min_delta:
            self.best, self.best_step, self.bad_evals = loss, step, 0
            return False
        self.bad_evals += 1
        return self.enabled and self.bad_evals >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": _finite_or_none(self.best), "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = _none_to_inf(state.get("best"))
        self.best_step = state.get("best_step")
        self.bad_evals = int(state.get("bad_evals", 0))


class StabilityAdvice:
    """Listens to the monitors' warnings and tells the loop when they call for a lower LR.

    The issue detectors run on the event thread; ``__call__`` only queues what they found and
    the loop takes it at a step boundary, at most once per ``cooldown`` steps.
    """

    CODES = ("lr_too_high", "exploding_gradients")

    def __init__(self, cooldown: int = 50) -> None:
        self.cooldown = cooldown
        self._found: queue.SimpleQueue = queue.SimpleQueue()
        self._last_step: int | None = None

    def __call__(self, event: Any) -> None:
        if getattr(event, "code", None) in self.CODES:
            self._found.put(event)

    def take(self, step: int) -> Any | None:
        """The warning to act on now, if any."""
        latest = None
        while not self._found.empty():
            latest = self._found.get_nowait()
        if latest is None or (self._last_step is not None and step - self._last_step < self.cooldown):
            return None
        self._last_step = step
        return latest


def scale_lr(optimizer, scheduler, factor: float) -> None:
    """Multiply the learning rate now and for the rest of the schedule.

    transformers' schedules are ``LambdaLR``: lr = base_lr x lambda(step), recomputed every
    step, so scaling ``base_lrs`` scales every later value, and the scheduler's state (saved
    in checkpoints) carries it.
    """
    scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


@dataclass
class Controls:
    """The four controls of one run, saved and restored together."""

    clipper: AdaptiveClipper
    guard: DivergenceGuard
    plateau: PlateauLR
    early: EarlyStopping

    @classmethod
    def from_config(cls, config) -> Controls:
        t, r = config.training, config.run
        return cls(
            clipper=AdaptiveClipper(t.max_grad_norm, enabled=t.adaptive_clipping, percentile=t.clip_percentile),
            guard=DivergenceGuard(spike_ratio=r.spike_threshold),
            plateau=PlateauLR(
                enabled=t.adaptive_lr,
                patience=t.lr_plateau_patience,
                factor=t.lr_plateau_factor,
                cooldown=t.lr_plateau_cooldown,
                floor=t.min_lr_ratio,
            ),
            early=EarlyStopping(
                enabled=r.enable_early_stopping,
                patience=r.early_stopping_patience,
                min_delta=r.early_stopping_min_delta,
            ),
        )

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).state_dict() for name in ("clipper", "guard", "plateau", "early")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("clipper", "guard", "plateau", "early"):
            getattr(self, name).load_state_dict(state.get(name, {}))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _none_to_inf(value: Any) -> float:
    return math.inf if value is None else float(value)
