"""Data-aware settings (``OPTIMIZE_FOR_DATA``): max length, steps, warm-up and LoRA capacity from the data.

The rules are a table in ``rules.toml`` beside this module (data, not code), validated on
load. :func:`fit_to_data` applies them to a resolved config: a rule may replace a value that
came from a preset or the defaults (``replaceable``), never one the user set, and each
decision, applied or not, is a :class:`~llmc_cli.optimize.batch.Choice` with its evidence and
the alternative. Pure: the data's lengths come in as a :class:`LengthProfile`, the model as
its parameter count and context length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import tomllib
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmc_cli.config.schema import RunConfig
from llmc_cli.data.profile import LengthProfile
from llmc_cli.optimize.batch import Choice

RULES_FILE = Path(__file__).with_name("rules.toml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MaxLengthRule(_Strict):
    percentile: float = Field(gt=0, le=100)
    multiple: int = Field(ge=1)
    floor: int = Field(ge=16)


class StepsRule(_Strict):
    min_steps: int = Field(ge=1)


class WarmupRule(_Strict):
    min_steps: int = Field(ge=0)
    max_ratio: float = Field(ge=0, le=0.5)


class EvalRule(_Strict):
    per_run: int = Field(ge=1)
    max_share: float = Field(gt=0, le=1)


class LoraByData(_Strict):
    below_target_tokens: int | None = Field(None, gt=0)
    max_rank: int | None = Field(None, ge=1)
    min_dropout: float | None = Field(None, ge=0, lt=1)
    min_weight_decay: float | None = Field(None, ge=0, le=1)


class LoraByModel(_Strict):
    from_params: int = Field(gt=0)
    max_dropout: float = Field(ge=0, lt=1)


class RuleBook(_Strict):
    """The whole rule table."""

    max_length: MaxLengthRule
    steps: StepsRule
    warmup: WarmupRule
    eval: EvalRule
    lora_by_data: list[LoraByData]
    lora_by_model: list[LoraByModel] = []

    @model_validator(mode="after")
    def _ordered(self) -> RuleBook:
        bounds = [row.below_target_tokens for row in self.lora_by_data]
        if not bounds or bounds[-1] is not None or None in bounds[:-1]:
            raise ValueError("lora_by_data needs rows with below_target_tokens, then one row without it")
        if bounds[:-1] != sorted(bounds[:-1]):  # type: ignore[type-var]
            raise ValueError("lora_by_data rows must have increasing below_target_tokens")
        return self

    def data_row(self, target_tokens: int) -> LoraByData:
        return next(
            r for r in self.lora_by_data if r.below_target_tokens is None or target_tokens < r.below_target_tokens
        )


@cache
def load_rules(path: Path = RULES_FILE) -> RuleBook:
    """Load and validate the rule table (cached)."""
    with path.open("rb") as handle:
        return RuleBook.model_validate(tomllib.load(handle))


@dataclass
class DataFit:
    """What the rules chose: config values to set, why rows, and warnings for the run."""

    values: dict[str, Any] = field(default_factory=dict)
    choices: list[Choice] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    estimates: dict[str, int] = field(default_factory=dict)  # rows and optimizer steps, from the sample


def fit_to_data(
    config: RunConfig,
    replaceable: Callable[[str], bool],
    profile: LengthProfile,
    train_records: int,
    total_params: int,
    context: int | None,
    rules: RuleBook | None = None,
) -> DataFit:
    """Apply the rules to ``config``; ``replaceable(key)`` says whether a key's value may change.

    Args:
        profile: the training examples' token lengths (a sample, templated).
        train_records: training examples after the validation split.
        total_params: the model's parameters; ``context``: its longest sequence, if known.
    """
    rules = rules or load_rules()
    fit = DataFit()
    lengths = profile.lengths
    if not lengths:
        return fit
    max_length = _max_length(config, replaceable, profile, context, rules.max_length, fit)
    _steps_and_warmup(config, replaceable, profile, train_records, max_length, rules, fit)
    _lora(config, replaceable, profile.target_tokens(train_records), total_params, rules, fit)
    return fit


def _max_length(config, replaceable, profile: LengthProfile, context, rule: MaxLengthRule, fit: DataFit) -> int:
    current, packing = config.data.max_length, config.data.packing
    covered = _percentile(profile, rule.percentile)
    wanted = max(rule.floor, -(-covered // rule.multiple) * rule.multiple)
    if context:
        wanted = min(wanted, context)
    sample = f"{profile.sampled:,} examples" if profile.exact else f"a sample of {profile.sampled:,} examples"
    evidence = f"p{rule.percentile:g} of {sample} is {covered:,} tokens (templated)"
    longer = profile.share_longer(wanted)
    if not replaceable("max_length"):
        fit.choices.append(Choice("max_length", current, "set by you", f"{wanted}: {evidence}"))
        return current
    if wanted == current or (packing and wanted < current):
        why = f"kept: {evidence}"
        if packing and wanted < current:
            why += "; rows are packed up to max_length, so a lower one would put fewer tokens in each step"
        fit.choices.append(Choice("max_length", current, why, f"{wanted}: {longer:.1%} of examples longer"))
        return current
    fit.values["max_length"] = wanted
    rule_text = f"{evidence}: {wanted} keeps {1 - longer:.1%} whole"
    if context and wanted == context and covered > context:
        rule_text = f"{evidence}; the model's context is {context}"
    fit.choices.append(
        Choice("max_length", wanted, rule_text, f"{current} (preset): {profile.share_longer(current):.1%} longer")
    )
    return wanted


def _percentile(profile: LengthProfile, q: float) -> int:
    if q in (50, 95, 99):
        return profile.lengths[f"p{q:g}"]
    import numpy as np

    return int(np.percentile(profile._lengths, q, method="higher"))


def _steps_and_warmup(config, replaceable, profile, train_records, max_length, rules: RuleBook, fit: DataFit) -> None:
    t = config.training
    if t.max_steps:
        return
    rows = profile.rows(train_records, max_length, config.data.packing, t.seed)
    batches = math.ceil(rows / t.batch_size)

    def steps(accum: int) -> int:
        return max(1, math.ceil(t.epochs * math.ceil(batches / accum)))

    accum, minimum = t.grad_accum, rules.steps.min_steps
    about = f"about {rows:,} rows of up to {max_length} tokens"
    if steps(accum) < minimum and accum > 1 and replaceable("grad_accum"):
        lowered = next((a for a in range(accum - 1, 0, -1) if steps(a) >= minimum), 1)
        fit.values["grad_accum"] = lowered
        fit.choices.append(
            Choice(
                "grad_accum",
                lowered,
                f"{about}: {steps(lowered)} optimizer steps, where at least {minimum} are wanted",
                f"{accum} (preset): {steps(accum)} steps",
            )
        )
        accum = lowered
    total = steps(accum)
    fit.estimates.update(rows=rows, steps=total)
    if total < minimum:
        fit.warnings.append(
            f"This run has only {total} optimizer steps ({about}, batch {t.batch_size} x accumulation {accum}, "
            f"{t.epochs:g} epochs): an adapter barely moves in so few. Raise --epochs, lower --batch-size or "
            "--grad-accum, or add data."
        )
    ratio = t.warmup_ratio
    wanted = min(rules.warmup.max_ratio, rules.warmup.min_steps / total)
    if round(ratio * total) < rules.warmup.min_steps and wanted > ratio and replaceable("warmup_ratio"):
        wanted = round(wanted, 4)
        fit.values["warmup_ratio"] = wanted
        fit.choices.append(
            Choice(
                "warmup_ratio",
                wanted,
                f"{round(wanted * total)} warm-up steps of about {total}: at least {rules.warmup.min_steps}, "
                f"at most {rules.warmup.max_ratio:.0%} of the run",
                f"{ratio:g} (preset): {round(ratio * total)} warm-up steps",
            )
        )


def _lora(config, replaceable, target_tokens: int, total_params: int, rules: RuleBook, fit: DataFit) -> None:
    lora, training = config.lora, config.training
    row = rules.data_row(target_tokens)
    size = f"about {target_tokens:,} tokens in the loss"
    if row.below_target_tokens is not None:
        size += f" (under {row.below_target_tokens:,})"
    if row.max_rank is not None and lora.lora_r > row.max_rank and replaceable("lora_r"):
        fit.values["lora_r"] = row.max_rank
        fit.choices.append(
            Choice("lora_r", row.max_rank, f"{size}: rank at most {row.max_rank}", f"{lora.lora_r} (preset)")
        )
        if replaceable("lora_alpha"):
            alpha = lora.lora_alpha * row.max_rank / lora.lora_r
            fit.values["lora_alpha"] = alpha
            fit.choices.append(
                Choice(
                    "lora_alpha", alpha, f"alpha / r kept at {lora.lora_alpha / lora.lora_r:g}", f"{lora.lora_alpha:g}"
                )
            )
    dropout = lora.lora_dropout
    if row.min_dropout is not None and dropout < row.min_dropout and replaceable("lora_dropout"):
        fit.values["lora_dropout"] = dropout = row.min_dropout
        fit.choices.append(Choice("lora_dropout", dropout, f"{size}: at least {dropout:g}", f"{lora.lora_dropout:g}"))
    for model_row in rules.lora_by_model:
        if total_params >= model_row.from_params and dropout > model_row.max_dropout and replaceable("lora_dropout"):
            fit.values["lora_dropout"] = model_row.max_dropout
            fit.choices.append(
                Choice(
                    "lora_dropout",
                    model_row.max_dropout,
                    f"{total_params / 1e9:.0f}B parameters: at most {model_row.max_dropout:g} (QLoRA's setting)",
                    f"{dropout:g}",
                )
            )
            break
    decay = training.weight_decay
    if row.min_weight_decay is not None and decay < row.min_weight_decay and replaceable("weight_decay"):
        fit.values["weight_decay"] = row.min_weight_decay
        fit.choices.append(
            Choice("weight_decay", row.min_weight_decay, f"{size}: at least {row.min_weight_decay:g}", f"{decay:g}")
        )
