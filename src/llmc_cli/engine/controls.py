"""Training controls: decisions the loop takes at step boundaries from its own numbers.

- :class:`AdaptiveClipper`: the clipping threshold for the next step, from a running
  percentile of recent gradient norms, never above ``max_grad_norm``.
- :class:`DivergenceGuard`: is this step's loss or gradient non-finite, the loss a spike
  far above the recent median, or far above where the run started?
- :class:`PlateauLR`: reduce-on-plateau over the evaluations, with a cooldown.
- :class:`InstabilityLR`: lower the LR when the loss oscillates without going down or a
  gradient norm explodes, at most once per cooldown.
- :class:`EarlyStopping`: stop when the eval loss has not improved for ``patience`` evals.

Each is pure bookkeeping over numbers the loop hands it, deterministic, with ``state_dict`` /
``load_state_dict`` (JSON-friendly): checkpoints carry them, so a resumed or rolled-back run
decides exactly as before. The tests of what counts as a spike, an oscillation or an exploding
gradient are :mod:`llmc_cli.stats`, shared with the monitors that only tell the user.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

from llmc_cli import stats


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
        if stats.finite(norm):
            self.norms = [*self.norms[-(self.window - 1) :], norm]

    def state_dict(self) -> dict[str, Any]:
        return {"norms": list(self.norms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.norms = [float(v) for v in state.get("norms", [])]


@dataclass
class DivergenceGuard:
    """Classifies a step: ``"non-finite"`` (loss or gradient norm), ``"spike"`` (far above the recent
    median), ``"diverged"`` (far above where the run started) or None (fine).

    The recent window needs ``stats.MIN_HISTORY`` steps before it can judge; the start does not:
    a learning rate far too high shows in the first steps, as a loss ``start_ratio`` times (and
    ``start_margin`` nats) above the start or a gradient norm ``norm_factor`` times the first
    step's. The start is the step-0 eval loss or the first step's loss (before any update),
    whichever is higher; evaluations are judged against the step-0 eval (:meth:`eval_diverged`).
    """

    spike_ratio: float = 3.0
    window: int = 50
    start_ratio: float = 2.0
    start_margin: float = 1.0
    norm_factor: float = 100.0
    eval_ratio: float = 1.5
    eval_margin: float = 0.5
    losses: deque = field(default_factory=deque)
    start_loss: float | None = None  # the train loss the run is judged against
    start_eval: float | None = None  # the step-0 eval loss
    start_norm: float | None = None  # the first step's gradient norm

    def __post_init__(self) -> None:
        self.losses = deque(self.losses, maxlen=self.window)

    def set_start_eval(self, loss: float | None) -> None:
        """The step-0 eval loss of a fresh run (the base model's)."""
        if loss is not None and stats.finite(loss):
            self.start_eval = loss
            self.start_loss = max(loss, self.start_loss or loss)

    def check(self, loss: float, grad_norm: float) -> str | None:
        if not stats.finite(loss, grad_norm):
            return "non-finite"
        if stats.spike(self.losses, loss, self.spike_ratio):
            return "spike"
        # Before the first applied step the weights are the start: nothing to judge against yet.
        return "diverged" if self.start_norm is not None and self.far_from_start(loss, grad_norm) else None

    def far_from_start(self, loss: float, grad_norm: float | None = None) -> bool:
        """A train loss (or gradient norm) so far above the run's start that training has diverged."""
        start = self.start_loss
        if start is not None and loss > max(self.start_ratio * start, start + self.start_margin):
            return True
        return (
            grad_norm is not None
            and self.start_norm is not None
            and grad_norm > max(self.norm_factor * self.start_norm, stats.EXPLOSION_FLOOR)
        )

    def eval_diverged(self, loss: float) -> bool:
        """An eval loss clearly above the step-0 eval: the adapter made the model worse than the base."""
        if not stats.finite(loss):
            return True
        start = self.start_eval
        return start is not None and loss > max(self.eval_ratio * start, start + self.eval_margin)

    def record(self, loss: float, grad_norm: float) -> None:
        """An applied step; the first one also sets the start (its loss and norm are the base model's)."""
        if self.start_norm is None:
            self.start_norm = grad_norm
            self.start_loss = max(loss, self.start_loss or loss)
        self.losses.append(loss)

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "start_loss": self.start_loss,
            "start_eval": self.start_eval,
            "start_norm": self.start_norm,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = deque((float(v) for v in state.get("losses", [])), maxlen=self.window)
        self.start_loss = state.get("start_loss")
        self.start_eval = state.get("start_eval")
        self.start_norm = state.get("start_norm")


@dataclass
class PlateauLR:
    """Ask for a lower LR after ``patience`` evals without an improvement of ``min_delta``.

    After asking, ``cooldown`` evals pass before counting again. The LR itself, and its floor,
    belong to :class:`~llmc_cli.engine.lr.LearningRate`.
    """

    enabled: bool = True
    patience: int = 3
    cooldown: int = 1
    min_delta: float = 0.0
    best: float = math.inf
    bad_evals: int = 0
    cooling: int = 0

    def observe(self, loss: float) -> bool:
        """Record an eval loss; True when the LR should be lowered now."""
        if loss < self.best - self.min_delta:
            self.best, self.bad_evals = loss, 0
            return False
        if self.cooling > 0:
            self.cooling -= 1
            return False
        self.bad_evals += 1
        if not self.enabled or self.bad_evals < self.patience:
            return False
        self.bad_evals, self.cooling = 0, self.cooldown
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"best": _finite_or_none(self.best), "bad_evals": self.bad_evals, "cooling": self.cooling}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = _none_to_inf(state.get("best"))
        self.bad_evals = int(state.get("bad_evals", 0))
        self.cooling = int(state.get("cooling", 0))


@dataclass
class InstabilityLR:
    """Ask for a lower LR when the recent steps show the loss oscillating without decreasing or
    the latest gradient norm exploding; at most once per ``cooldown`` steps."""

    enabled: bool = True
    window: int = 50
    cooldown: int = 50
    losses: deque = field(default_factory=deque)
    norms: deque = field(default_factory=deque)
    last_step: int | None = None

    def __post_init__(self) -> None:
        self.losses = deque(self.losses, maxlen=self.window)
        self.norms = deque(self.norms, maxlen=self.window)

    def observe(self, step: int, loss: float, grad_norm: float) -> tuple[str, dict[str, float]] | None:
        """Record an applied step; ``(code, evidence)`` when the LR should be lowered now."""
        self.losses.append(loss)
        self.norms.append(grad_norm)
        if not self.enabled or (self.last_step is not None and step - self.last_step < self.cooldown):
            return None
        for code, evidence in (
            ("exploding_gradients", stats.explosion(self.norms)),
            ("lr_too_high", stats.oscillation(self.losses, self.window)),
        ):
            if evidence is not None:
                self.last_step = step
                return code, evidence
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "norms": list(self.norms), "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = deque((float(v) for v in state.get("losses", [])), maxlen=self.window)
        self.norms = deque((float(v) for v in state.get("norms", [])), maxlen=self.window)
        self.last_step = state.get("last_step")


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

    def reason(self) -> str:
        return (
            f"Eval loss has not improved for {self.patience} evaluations (best {self.best:.4f} at step "
            f"{self.best_step}): stopping early."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best": _finite_or_none(self.best), "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = _none_to_inf(state.get("best"))
        self.best_step = state.get("best_step")
        self.bad_evals = int(state.get("bad_evals", 0))


@dataclass
class Controls:
    """The controls of one run, saved and restored together."""

    clipper: AdaptiveClipper
    guard: DivergenceGuard
    plateau: PlateauLR
    instability: InstabilityLR
    early: EarlyStopping

    @classmethod
    def from_config(cls, config) -> Controls:
        t, r = config.training, config.run
        return cls(
            clipper=AdaptiveClipper(t.max_grad_norm, enabled=t.adaptive_clipping, percentile=t.clip_percentile),
            guard=DivergenceGuard(spike_ratio=r.spike_threshold),
            plateau=PlateauLR(enabled=t.adaptive_lr, patience=t.lr_plateau_patience, cooldown=t.lr_plateau_cooldown),
            instability=InstabilityLR(enabled=t.adaptive_lr),
            early=EarlyStopping(
                enabled=r.enable_early_stopping,
                patience=r.early_stopping_patience,
                min_delta=r.early_stopping_min_delta,
            ),
        )

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name).state_dict() for f in fields(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in fields(self):
            getattr(self, f.name).load_state_dict(state.get(f.name, {}))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _none_to_inf(value: Any) -> float:
    return math.inf if value is None else float(value)
