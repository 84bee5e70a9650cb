"""The learning rate's one owner: the planned schedule times one multiplier.

The scheduler (transformers' warmup + cosine/linear/constant, a ``LambdaLR``) gives the
planned rate and is never modified, so its saved state means the same thing in every
checkpoint. On top of it sits one multiplier, the product of what each cause lowered it by:

- ``plateau``: the eval loss stopped improving (:class:`~llmc_cli.engine.controls.PlateauLR`);
- ``instability``: the loss oscillates or a gradient norm explodes
  (:class:`~llmc_cli.engine.controls.InstabilityLR`);
- ``rollback``: recovery went back to the last good state after a divergence.

Every change goes through :meth:`LearningRate.lower`, and :meth:`LearningRate.apply` is the
one function that writes schedule x multiplier into the optimizer. The factors are saved in
every checkpoint, so a resumed run trains at exactly the rate the uninterrupted one did.
"""

from __future__ import annotations

import math
from typing import Any

CAUSES = ("plateau", "instability", "rollback")


class LearningRate:
    """Schedule x multiplier for one optimizer.

    Args:
        optimizer: Its param groups receive the effective rate.
        scheduler: A ``LambdaLR``-style scheduler; ``get_last_lr()`` is the planned rate.
        floor: The training controls (plateau, instability) never take the multiplier of their
            own factors below this share of the plan; rollbacks are bounded by their budget instead.
    """

    def __init__(self, optimizer: Any, scheduler: Any, floor: float = 0.0) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.floor = floor
        self.factors: dict[str, float] = dict.fromkeys(CAUSES, 1.0)

    @property
    def multiplier(self) -> float:
        return math.prod(self.factors.values())

    @property
    def current(self) -> float:
        """The rate the next optimizer step uses (first param group)."""
        return self.optimizer.param_groups[0]["lr"]

    def step(self) -> None:
        """Advance the schedule by one optimizer step."""
        self.scheduler.step()
        self.apply()

    def lower(self, cause: str, factor: float) -> float:
        """Multiply the rate by ``factor`` (< 1) for ``cause``, now and for the rest of the run.

        Returns the factor actually applied: less than asked when a control reaches the floor,
        1.0 when nothing changed.
        """
        if cause not in CAUSES:
            raise ValueError(f"unknown cause {cause!r}; one of {CAUSES}")
        if cause == "rollback":
            applied = factor
        else:
            controls = self.factors["plateau"] * self.factors["instability"]
            applied = max(self.floor, controls * factor) / controls
        if applied >= 1.0:
            return 1.0
        self.factors[cause] *= applied
        self.apply()
        return applied

    def apply(self) -> None:
        """Write schedule x multiplier into every param group."""
        multiplier = self.multiplier
        for group, planned in zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
            group["lr"] = planned * multiplier

    def state_dict(self) -> dict[str, float]:
        return dict(self.factors)

    def load_state_dict(self, state: dict[str, Any], keep: tuple[str, ...] = ()) -> None:
        """Take the factors of ``state`` (missing ones are 1.0), except those named in ``keep``."""
        for cause in CAUSES:
            if cause not in keep:
                self.factors[cause] = float(state.get(cause, 1.0))
        self.apply()
