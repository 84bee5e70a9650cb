"""Tuned presets (``--preset tuned:NAME``): written from a study's best over the study's preset,
layered over that preset for the run's family and data size with each tuned value named by its
origin, and refused clearly when missing, malformed or already there."""

from __future__ import annotations

import optuna
import pytest

from llmc_cli.config.layers import cli_layer, resolve
from llmc_cli.config.presets import load_presets, preset_layer
from llmc_cli.config.tuned import load_tuned
from llmc_cli.errors import ConfigError
from llmc_cli.tune.best import best_of, export_preset


@pytest.fixture
def presets(tmp_path, monkeypatch):
    folder = tmp_path / "presets"
    monkeypatch.setenv("LLMC_PRESETS", str(folder))
    return folder


def a_study(preset: str = "highspeed") -> optuna.Study:
    study = optuna.create_study(study_name="s")
    study.set_user_attr("base", {"data": "/d.jsonl", "model": "/m", "preset": preset, "config_file": None,
                                 "overrides": {"limit": 40}})  # fmt: skip
    lr = optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)
    for value, rate in ((1.5, 1e-3), (1.2, 4e-3)):
        values = {"lr": rate, "lora_r": 16, "lora_alpha": 32.0, "warmup_ratio": 0.05}
        study.add_trial(optuna.trial.create_trial(params={"lr": rate}, distributions={"lr": lr}, value=value,
                                                  user_attrs={"values": values}))  # fmt: skip
    return study


def test_a_tuned_preset_is_its_base_preset_with_the_best_values_on_top(presets):
    path = export_preset("gsm", best_of(a_study()))
    assert path == presets / "gsm.toml" and "trial (1, eval loss 1.2000)" in path.read_text()
    tuned = load_tuned("tuned:gsm")
    assert tuned.base == "highspeed" and tuned.values == {"lr": 4e-3, "lora_r": 16, "lora_alpha": 32.0,
                                                          "warmup_ratio": 0.05}  # fmt: skip

    layer = preset_layer("tinyllama", "tuned:gsm", 100)
    label, builtin = load_presets().layer("tinyllama", "highspeed", 100)
    resolved = resolve([layer])
    assert resolved.config.lora.lora_r == 16 and resolved.config.training.lr == 4e-3
    assert resolved.sources["lora_r"] == "tuned:gsm" and resolved.sources["lr"] == "tuned:gsm"
    assert resolved.config.data.max_length == builtin["max_length"] and resolved.sources["max_length"] == label


def test_a_study_over_a_tuned_preset_keeps_its_values_under_the_new_ones(presets):
    export_preset("first", best_of(a_study()))
    study = a_study(preset="tuned:first")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0,
                                              user_attrs={"values": {"lr": 2e-4}}))  # fmt: skip
    export_preset("second", best_of(study))
    second = load_tuned("tuned:second")
    assert second.base == "highspeed" and second.values["lr"] == 2e-4 and second.values["lora_r"] == 16


def test_missing_existing_and_malformed_tuned_presets_are_refused_with_the_fix(presets):
    export_preset("gsm", best_of(a_study()))
    with pytest.raises(ConfigError, match="already exists"):
        export_preset("gsm", best_of(a_study()))
    with pytest.raises(ConfigError, match="No tuned preset 'other'.*Known: tuned:gsm") as missing:
        load_tuned("tuned:other")
    assert "llmc tune best STUDY --export other" in missing.value.hint
    (presets / "bad.toml").write_text('base = "quality"\nlearning_rate = 1e-3\n')
    with pytest.raises(ConfigError, match=r"keys \['learning_rate'\]"):
        load_tuned("tuned:bad")
    (presets / "nobase.toml").write_text("lr = 1e-3\n")
    with pytest.raises(ConfigError, match="not a built-in preset"):
        load_tuned("tuned:nobase")
    with pytest.raises(ConfigError, match="preset = 'fast'.*tuned:NAME"):
        resolve([cli_layer({"preset": "fast"})])
