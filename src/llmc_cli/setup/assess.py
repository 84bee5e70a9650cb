"""What each choice would cost on this machine, from the run's own plan: fit, time, steps.

Each option is a dry run of exactly the config ``llmc train`` would get (the engine's plan, memory
fit and step-time prediction: engine/fit.py, engine/dryrun.py), so the wizard's table and the run
cannot disagree. The environment (``LLMC_*``, ``.env``) is layered as a run would; an existing
``./llmc.toml`` is not, because the wizard is writing the one the run will read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llmc_cli.config.schema import PRESET_NAMES
from llmc_cli.errors import LlmcError

GiB = 2**30


@dataclass(frozen=True)
class Option:
    """One preset (or model) on this machine and data, or why it could not be planned (``error``)."""

    preset: str
    model: str
    fits: bool = False
    peak_bytes: int | None = None
    budget_bytes: int | None = None
    micro_batch: int | None = None
    checkpointing: bool = False
    steps: int | None = None
    steps_exact: bool = False
    seconds: float | None = None
    epochs: float | None = None
    lora_r: int | None = None
    max_length: int | None = None
    lengths: dict[str, int] | None = None  # token lengths (p50/p95/p99/max) with the model's tokenizer
    train_records: int | None = None
    mean_tokens: float | None = None  # per example, with the model's tokenizer (a sample of the data)
    mean_targets: float | None = None  # tokens in the loss, per example
    error: str = ""
    failure: LlmcError | None = field(default=None, compare=False, repr=False)  # what stopped the plan

    @property
    def per_epoch_s(self) -> float | None:
        if self.seconds is None or not self.epochs:
            return None
        return self.seconds / self.epochs

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "failure"}
        return {**values, "per_epoch_s": self.per_epoch_s}


def assess(data: Path, model: str, preset: str, overrides: dict[str, Any] | None = None) -> Option:
    """Plan a run of ``preset`` on ``data`` with ``model`` and read what it would do."""
    from llmc_cli.config.layers import cli_layer, env_layers
    from llmc_cli.engine.dryrun import dry_run
    from llmc_cli.engine.fit import fit_to_machine
    from llmc_cli.engine.plan import plan_run

    flags = {"data": data, "model": model, "preset": preset, **(overrides or {})}
    try:
        plan = fit_to_machine(plan_run([*env_layers(), cli_layer(flags)]))
        report = dry_run(plan)
    except LlmcError as exc:
        return Option(preset, model, error=exc.message, failure=exc)
    config = plan.resolved.config
    memory = plan.memory or {}
    peak, budget = memory.get("total_bytes"), memory.get("budget_bytes")
    steps = report["steps"]
    profile = plan.profile or {}
    return Option(
        preset=preset,
        model=model,
        fits=peak is not None and budget is not None and peak <= budget,
        peak_bytes=peak,
        budget_bytes=budget,
        micro_batch=config.training.micro_batch or config.training.batch_size,
        checkpointing=bool(memory.get("gradient_checkpointing")),
        steps=steps.get("total_steps"),
        steps_exact=bool(steps.get("exact")),
        seconds=report["time"].get("total_s"),
        epochs=config.training.epochs if not config.training.max_steps else None,
        lora_r=config.lora.lora_r,
        max_length=config.data.max_length,
        lengths=profile.get("lengths"),
        train_records=plan.data.train_records,
        mean_tokens=profile.get("mean_tokens"),
        mean_targets=profile.get("mean_targets"),
        error="" if memory.get("total_bytes") is not None else memory.get("reason", "no memory estimate"),
    )


def assess_presets(data: Path, model: str, overrides: dict[str, Any] | None = None) -> list[Option]:
    """Every built-in preset, fastest first."""
    return [assess(data, model, preset, overrides) for preset in PRESET_NAMES]


def family_epoch_seconds(family: str, preset: str, checkpointing: bool, precision: str, device: str,
                         sample: Option) -> float | None:  # fmt: skip
    """Seconds an epoch of a family's model (not downloaded) would take on this data: the dry run's step-time
    formula (optimize/throughput.py) with the family's shape from the shipped traces (optimize/families.py),
    and the token counts of ``sample``, a local model's plan of the same data (its tokenizer stands in)."""
    from llmc_cli.config.presets import load_presets
    from llmc_cli.optimize.families import load_table
    from llmc_cli.optimize.layerprobe import layer_speed
    from llmc_cli.optimize.memory import ModelFacts
    from llmc_cli.optimize.throughput import STEP_EFFICIENCY, StepWork, predict

    efficiency = STEP_EFFICIENCY.get((device, precision))
    facts = load_table()["facts"].get(f"{family}/{preset}")
    if efficiency is None or facts is None or not sample.mean_tokens or not sample.train_records:
        return None
    facts = ModelFacts(**facts)
    examples = sample.train_records
    work = StepWork(examples, examples * sample.mean_tokens, examples * (sample.mean_targets or 0.0),
                    sample.mean_tokens / 2, checkpointing)  # fmt: skip
    rank = int(load_presets().layer(family, preset, None)[1].get("lora_r", 16))
    speed = layer_speed(facts.hidden_size, precision, device, rank)  # probed at the preset's LoRA rank
    return predict(facts, work, speed, efficiency, None, "an epoch").per_step_s


def duration(seconds: float | None) -> str:
    """``seconds`` as the table shows it: 45 s, 12 min, 3.5 h."""
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def gib(size: int | None) -> str:
    return "unknown" if size is None else f"{size / GiB:.2f} GiB"
