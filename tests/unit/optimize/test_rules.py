"""The data rules (optimize/rules.py): what each one chooses from the data, and that values the user
set are never replaced."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from llmc_cli.config.schema import RunConfig
from llmc_cli.data.profile import LengthProfile
from llmc_cli.data.tokenize import length_stats
from llmc_cli.optimize.rules import RuleBook, fit_to_data, load_rules

SMALL_MODEL = 135_000_000


def profile(lengths, targets: float = 100.0) -> LengthProfile:
    array = np.array(lengths, dtype=np.int64)
    return LengthProfile(len(array), len(array), length_stats(array), float(array.mean()), targets, _lengths=array)


def config(**values) -> RunConfig:
    base = dict(max_length=1024, packing=True, batch_size=4, grad_accum=4, epochs=3, lora_r=16, lora_alpha=32.0,
                lora_dropout=0.05, weight_decay=0.0, warmup_ratio=0.03)  # fmt: skip
    return RunConfig().with_updates(**{**base, **values})


def anything(_key: str) -> bool:
    return True


def fit(cfg, lengths, records, *, targets=100.0, params=SMALL_MODEL, context=4096, replaceable=anything):
    return fit_to_data(cfg, replaceable, profile(lengths, targets), records, params, context)


LONG_TAIL = [200] * 900 + [700] * 95 + [1500] * 5  # p99 = 700


def test_max_length_covers_the_p99_rounded_to_64_and_is_only_raised_when_rows_are_packed():
    unpacked = fit(config(packing=False), LONG_TAIL, 20_000)
    assert unpacked.values["max_length"] == 704  # 700 rounded up: lowered from 1024
    row = next(c for c in unpacked.choices if c.key == "max_length")
    assert "p99 of 1,000 examples is 700 tokens" in row.rule and "99.5% whole" in row.rule

    packed = fit(config(packing=True), LONG_TAIL, 20_000)
    assert "max_length" not in packed.values  # a lower row budget would change the tokens of each step
    assert "kept" in next(c for c in packed.choices if c.key == "max_length").rule

    raised = fit(config(packing=True, max_length=512), LONG_TAIL, 20_000)
    assert raised.values["max_length"] == 704


def test_max_length_stays_within_the_model_context_and_above_the_floor():
    assert fit(config(packing=False), [3000] * 100, 20_000, context=2048).values["max_length"] == 2048
    assert fit(config(packing=False), [20] * 100, 20_000).values["max_length"] == 128


def test_a_small_dataset_gets_fewer_accumulation_steps_until_it_has_enough_optimizer_steps():
    # 400 examples of ~250 tokens pack about 4 to a 1024-token row: ~100 rows, 25 batches of 4.
    result = fit(config(epochs=3), [250] * 400, 400)
    # accumulation 4 gives 3 x 7 = 21 steps; 2 gives 3 x 13 = 39; 1 gives 75 >= 50.
    assert result.values["grad_accum"] == 1
    row = next(c for c in result.choices if c.key == "grad_accum")
    assert "75 optimizer steps" in row.rule and "21 steps" in row.alternative
    assert not result.warnings


def test_too_few_steps_even_without_accumulation_is_a_warning():
    result = fit(config(epochs=1, batch_size=8), [250] * 256, 256)
    assert result.values["grad_accum"] == 1
    assert any("only 8 optimizer steps" in w and "--epochs" in w for w in result.warnings), result.warnings


def test_warmup_gets_at_least_five_steps_but_at_most_a_tenth_of_the_run():
    long_run = fit(config(grad_accum=1, epochs=2), [250] * 40_000, 40_000)  # thousands of steps: 3% is plenty
    assert "warmup_ratio" not in long_run.values
    short = fit(config(grad_accum=1, epochs=1), [250] * 400, 400)  # 25 steps -> 3 % is 1 step
    assert short.values["warmup_ratio"] == pytest.approx(0.1)  # 5 steps would be 20 %: capped at 10 %
    medium = fit(config(grad_accum=1, epochs=2), [250] * 4000, 4000)  # ~500 steps
    assert "warmup_ratio" not in medium.values


def test_lora_capacity_and_regularisation_follow_the_data_size_and_alpha_keeps_its_ratio():
    tiny = fit(config(lora_r=32, lora_alpha=64.0), [250] * 300, 300, targets=100)  # 30k target tokens
    assert tiny.values["lora_r"] == 8 and tiny.values["lora_alpha"] == 16.0
    assert tiny.values["lora_dropout"] == 0.1 and tiny.values["weight_decay"] == 0.01
    middle = fit(config(lora_r=32, lora_alpha=64.0), [250] * 1500, 1500, targets=100)  # 150k
    assert middle.values["lora_r"] == 16 and "lora_dropout" not in middle.values
    large = fit(config(lora_r=32, lora_alpha=64.0), [250] * 3000, 30_000, targets=100)  # 3M
    assert not {"lora_r", "lora_dropout", "weight_decay"} & set(large.values)


def test_a_large_model_gets_at_most_qlora_dropout():
    result = fit(config(lora_dropout=0.1), [250] * 3000, 30_000, params=33_000_000_000)
    assert result.values["lora_dropout"] == 0.05


def test_values_the_user_set_are_kept_and_shown_with_what_the_rule_would_have_chosen():
    user = {"max_length", "grad_accum", "lora_r", "lora_dropout", "weight_decay", "warmup_ratio"}
    result = fit(config(packing=False, lora_r=32), [250] * 300, 300, replaceable=lambda key: key not in user)
    assert result.values == {}  # lora_alpha follows the rank only when the rank changes
    row = next(c for c in result.choices if c.key == "max_length")
    assert row.value == 1024 and row.rule == "set by you" and row.alternative.startswith("256:")


def test_max_steps_leaves_steps_and_warmup_alone():
    result = fit(config(max_steps=5), [250] * 300, 300)
    assert not {"grad_accum", "warmup_ratio"} & set(result.values) and not result.warnings


def test_the_shipped_rules_load_and_a_broken_table_is_refused():
    book = load_rules()
    assert book.steps.min_steps == 50 and book.eval.per_run == 10
    raw = book.model_dump()
    raw["lora_by_data"] = raw["lora_by_data"][:-1]  # no catch-all row
    with pytest.raises(ValidationError, match="one row without it"):
        RuleBook.model_validate(raw)
    raw = book.model_dump()
    raw["lora_by_data"][0]["below_target_tokens"], raw["lora_by_data"][1]["below_target_tokens"] = 10**6, 10
    with pytest.raises(ValidationError, match="increasing"):
        RuleBook.model_validate(raw)
