"""Which preset and which model to recommend, and why: pure rules over assessed options.

Preset, by the data's size bucket (the same buckets the presets' schedules use):

- small (under ``small_below`` examples): **bestaccuracy**. Its extra epochs and rank-32 all-linear
  adapter cost least on few examples, which gain most from them.
- medium: **quality**. An all-linear adapter for a few epochs at a moderate cost.
- large (``large_from`` examples or more): **highspeed**. One epoch already gives thousands of
  steps; the thorough presets multiply the time for a smaller gain.

Then the machine: a preset whose estimated peak memory does not fit the budget, or whose estimated
time exceeds :data:`MAX_HOURS` while a cheaper one fits, gives way to the next cheaper preset.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmc_cli.config.schema import PRESET_NAMES
from llmc_cli.setup.assess import Option, duration, gib

MAX_HOURS = 12.0
BY_BUCKET = {"small": "bestaccuracy", "medium": "quality", "large": "highspeed"}
BUCKET_WHY = {
    "small": "a small dataset: the most thorough preset's extra epochs and larger adapter cost least on few "
    "examples, which gain most from them",
    "medium": "a medium dataset: an all-linear adapter for a few epochs, at a moderate cost",
    "large": "a large dataset: one epoch already gives many steps, and the thorough presets would multiply the "
    "time for a smaller gain",
}


@dataclass(frozen=True)
class Recommendation:
    choice: str
    reason: str


def bucket_of(train_records: int) -> str:
    from llmc_cli.config.presets import load_presets

    return load_presets().buckets.bucket(train_records)


def recommend_preset(options: list[Option], bucket: str) -> Recommendation:
    """The preset for a dataset of size ``bucket`` among ``options`` (one per preset, any order)."""
    by_name = {option.preset: option for option in options}
    wanted = BY_BUCKET[bucket]
    if options and all(option.peak_bytes is None for option in options):
        return Recommendation(
            wanted, f"{BUCKET_WHY[bucket]}; by the data's size only: no preset could be planned here "
            "(the reason is above)",
        )  # fmt: skip
    order = list(PRESET_NAMES)  # fastest first
    reason = BUCKET_WHY[bucket]
    steps_down = []
    for name in reversed(order[: order.index(wanted) + 1]):
        option = by_name.get(name)
        if option is None:
            continue
        cheaper = [by_name[n] for n in order[: order.index(name)] if n in by_name and by_name[n].fits]
        if option.error and option.peak_bytes is None:
            steps_down.append(f"{name} could not be planned ({option.error})")
        elif not option.fits:
            steps_down.append(
                f"{name} does not fit: it needs an estimated {gib(option.peak_bytes)}, "
                f"over the budget of {gib(option.budget_bytes)}"
            )
        elif option.seconds is not None and option.seconds > MAX_HOURS * 3600 and cheaper:
            steps_down.append(f"{name} would take about {duration(option.seconds)} (over {MAX_HOURS:g} h)")
        else:
            text = reason if name == wanted else f"{reason}; but " + "; ".join(steps_down)
            return Recommendation(name, f"{text}. {_cost(option)}")
    fallback = order[0]
    return Recommendation(
        fallback,
        f"no preset fits this machine by the estimate ({'; '.join(steps_down) or 'none planned'}); {fallback} "
        "needs the least, and out-of-memory recovery will shrink its micro-batch",
    )


def recommend_model(fits: list[tuple[str, bool, float | None]]) -> Recommendation | None:
    """Among (label, fits, seconds per epoch) of local models, largest first: the first that fits
    and trains an epoch within :data:`MAX_HOURS`, else the first that fits at all."""
    fitting = [item for item in fits if item[1]]
    if not fitting:
        return None
    for label, _, per_epoch in fitting:
        if per_epoch is None or per_epoch <= MAX_HOURS * 3600:
            return Recommendation(label, "the largest local model that fits this machine" + _epoch(per_epoch))
    label, _, per_epoch = fitting[-1]
    return Recommendation(
        label, "every local model takes over 12 h an epoch here; this is the quickest" + _epoch(per_epoch)
    )


def _cost(option: Option) -> str:
    parts = [f"Estimated peak {gib(option.peak_bytes)} of {gib(option.budget_bytes)}"]
    if option.seconds is not None:
        parts.append(f"about {duration(option.seconds)} for {option.steps} steps")
    return ", ".join(parts) + "."


def _epoch(per_epoch: float | None) -> str:
    return f" (about {duration(per_epoch)} an epoch)" if per_epoch is not None else ""
