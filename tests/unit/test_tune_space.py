"""Search spaces for ``llmc tune``: the default one around the resolved config, and a user's TOML
checked key by key like any llmc config."""

from __future__ import annotations

import optuna
import pytest

from llmc_cli.config.schema import RunConfig
from llmc_cli.errors import ConfigError
from llmc_cli.tune.space import Dimension, Space, default_space, load_space


def space_file(tmp_path, text: str):
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def test_a_space_file_gives_typed_ranges_and_choices(tmp_path):
    space = load_space(space_file(tmp_path, """
[lr]
low = 1e-5
high = 1e-3
log = true

[lora_r]
low = 4
high = 16
step = 4

[target_modules]
choices = ["q_proj,v_proj", "all-linear"]
"""))  # fmt: skip
    lr, rank, modules = space.dimensions
    assert (lr.low, lr.high, lr.log, lr.integer) == (1e-5, 1e-3, True, False)
    assert rank.integer and rank.grid() == [4, 8, 12, 16]
    assert modules.choices == ("q_proj,v_proj", "all-linear")

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = space.suggest(study.ask())
        assert 1e-5 <= params["lr"] <= 1e-3 and params["lora_r"] in (4, 8, 12, 16)
        assert isinstance(params["lora_r"], int) and params["target_modules"] in modules.choices
        RunConfig().with_updates(**params)  # every suggestion is a valid config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[learning_rate]\nlow = 1e-5\nhigh = 1e-3\n", "not an llmc config key"),
        ("[data]\nchoices = ['a.jsonl']\n", "cannot be searched"),
        ("[lora_r]\nlow = 0\nhigh = 8\n", "0 is not a valid lora_r"),
        ("[lr]\nlow = 1e-3\nhigh = 1e-5\n", "must be below high"),
        ("[lora_dropout]\nlow = 0.0\nhigh = 0.2\nlog = true\n", "a log range needs low > 0"),
        ("[lr]\nlow = 1e-5\n", "needs low and high"),
        ("[lr]\nlow = 1e-5\nhigh = 1e-3\nspread = 2\n", "unknown fields ['spread']"),
        ("[scheduler]\nchoices = ['cosine', 'exponential']\n", "'exponential' is not a valid scheduler"),
        ("[scheduler]\nlow = 1\nhigh = 2\n", "is not a valid scheduler"),
        ("lr = 3\n", "must be a table"),
        ("[lr\n", "Fix the TOML syntax"),
        ("", "names no key"),
    ],
)
def test_a_bad_space_file_names_the_key_and_the_fix(tmp_path, text, expected):
    with pytest.raises(ConfigError) as caught:
        load_space(space_file(tmp_path, text))
    assert expected in str(caught.value), str(caught.value)
    assert caught.value.hint


def test_the_default_space_is_around_the_resolved_config_and_contains_it():
    config = RunConfig().with_updates(lr=2e-4, lora_r=16, target_modules="q_proj,v_proj", weight_decay=0.0)
    space = default_space(config)
    assert space.keys == ["lr", "lora_r", "lora_dropout", "target_modules", "warmup_ratio", "weight_decay"]
    lr = space.dimensions[0]
    assert (lr.low, lr.high, lr.log) == (pytest.approx(5e-5), pytest.approx(8e-4), True)
    start = space.start(config)
    assert set(start) == set(space.keys)  # trial 0 can be the config itself
    assert start["target_modules"] == "q_proj,v_proj" and start["lora_r"] == 16


def test_a_continuous_range_cannot_be_a_grid():
    with pytest.raises(ConfigError, match="cannot enumerate"):
        Space((Dimension("lr", 1e-5, 1e-3, log=True),)).grid()
