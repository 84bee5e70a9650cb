from pathlib import Path

import pytest

from llmc_cli.config.layers import Layer, cli_layer, env_layers, resolve, toml_layer
from llmc_cli.config.schema import FIELD_SECTION, RunConfig
from llmc_cli.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def test_later_layers_win_and_sources_are_recorded(tmp_path, monkeypatch):
    toml = tmp_path / "llmc.toml"
    toml.write_text("lora_r = 4\nlr = 0.01\n[training]\nbatch_size = 3\n")
    monkeypatch.setenv("LLMC_LR", "0.02")
    dotenv = tmp_path / ".env"
    dotenv.write_text("LLMC_BATCH_SIZE=5\nLLMC_SEED=7\n")
    preset = Layer("preset:tinyllama/quality/small", {"lora_r": 8, "lr": 3e-4, "epochs": 5})
    layers = [preset, toml_layer(toml), *env_layers(dotenv), cli_layer({"seed": 9, "epochs": None})]

    resolved = resolve(layers)

    cfg = resolved.config
    assert (cfg.lora.lora_r, cfg.training.lr, cfg.training.batch_size) == (4, 0.02, 5)
    assert (cfg.training.epochs, cfg.training.seed) == (5, 9)
    assert resolved.sources["lora_r"] == f"toml:{toml}"
    assert resolved.sources["lr"] == "env:LLMC_LR"
    assert resolved.sources["batch_size"] == f"dotenv:{dotenv}"
    assert resolved.sources["epochs"] == "preset:tinyllama/quality/small"
    assert resolved.sources["seed"] == "cli"
    assert resolved.sources["max_grad_norm"] == "default"


def test_spec_names_work_with_and_without_prefix(monkeypatch):
    monkeypatch.setenv("CHECKPOINT_INTERVAL", "250")
    monkeypatch.setenv("ENABLE_MIXED_PRECISION", "false")
    monkeypatch.setenv("LLMC_MAX_CHECKPOINTS", "2")
    monkeypatch.setenv("MAX_CHECKPOINTS", "9")  # the prefixed name wins
    resolved = resolve(env_layers(None))
    assert resolved.config.run.checkpoint_interval == 250
    assert resolved.config.model.enable_mixed_precision is False
    assert resolved.config.run.max_checkpoints == 2
    assert resolved.sources["checkpoint_interval"] == "env:CHECKPOINT_INTERVAL"


def test_unprefixed_names_only_for_spec_keys(monkeypatch):
    monkeypatch.setenv("LR", "0.5")  # too generic a name to read unprefixed
    assert resolve(env_layers(None)).config.training.lr == RunConfig().training.lr


def test_every_bad_value_is_reported_at_once_with_its_source(monkeypatch):
    monkeypatch.setenv("LLMC_LORA_R", "0")
    with pytest.raises(ConfigError) as info:
        resolve([*env_layers(None), cli_layer({"lr": -1.0, "scheduler": "cosinus"})])
    message = info.value.message
    assert "lora_r = '0' (from env:LLMC_LORA_R)" in message
    assert "lr = -1.0 (from cli)" in message
    assert "scheduler = 'cosinus' (from cli)" in message


def test_toml_unknown_key_gets_a_suggestion(tmp_path):
    toml = tmp_path / "llmc.toml"
    toml.write_text("lora_rank = 4\n[lora]\nlr = 0.1\n")
    with pytest.raises(ConfigError) as info:
        toml_layer(toml)
    assert "unknown key 'lora_rank' (did you mean 'lora_r'?)" in info.value.message
    assert "unknown key '[lora] lr'" in info.value.message


def test_toml_syntax_error_names_the_line(tmp_path):
    toml = tmp_path / "llmc.toml"
    toml.write_text("lr = 0.1\nlora_r = = 3\n")
    with pytest.raises(ConfigError, match="line 2"):
        toml_layer(toml)


def test_target_modules_accepts_comma_lists():
    cfg = resolve([cli_layer({"target_modules": "q_proj, v_proj"})]).config
    assert cfg.lora.target_modules == ("q_proj", "v_proj")
    assert resolve([cli_layer({"target_modules": "all-linear"})]).config.lora.target_modules == "all-linear"


def test_example_toml_documents_every_key_and_is_current():
    from llmc_cli.config.example import render

    text = (ROOT / "llmc.toml.example").read_text()
    assert text == render(), "regenerate: python -m llmc_cli.config.example > llmc.toml.example"
    for key in FIELD_SECTION:
        assert f"{key} = " in text
    resolve([toml_layer(ROOT / "llmc.toml.example")])  # the example itself is a valid config


def test_llmc_toml_in_the_working_directory_is_read_unless_another_is_named(tmp_path, monkeypatch):
    from llmc_cli.engine.plan import user_layers

    monkeypatch.chdir(tmp_path)
    assert [layer.label for layer in user_layers({}, env_file=None)] == ["env", "cli"]
    Path("llmc.toml").write_text("lora_r = 4\n")
    other = tmp_path / "other.toml"
    other.write_text("lora_r = 2\n")

    assert resolve(user_layers({}, env_file=None)).config.lora.lora_r == 4
    assert resolve(user_layers({}, config_file=other, env_file=None)).config.lora.lora_r == 2


@pytest.mark.parametrize(
    "name,value",
    [("COMPILE_MODEL", "true"), ("ENABLE_HYPERPARAMETER_TUNING", "true"), ("ENABLE_DISTRIBUTED_TRAINING", "true")],
)  # fmt: skip
def test_keys_of_features_not_built_yet_are_refused_not_ignored(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        resolve(env_layers(None))
    message = str(caught.value)
    assert f"{name.lower()} = '{value}' (from env:{name})" in message and "not available yet" in message


def test_hyperparameter_trials_is_read_for_llmc_tune(monkeypatch):
    monkeypatch.setenv("HYPERPARAMETER_TRIALS", "20")
    assert resolve(env_layers(None)).config.run.hyperparameter_trials == 20


def test_the_specifications_env_file_with_its_defaults_is_accepted(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "COMPILE_MODEL=false\nOPTIMIZE_MEMORY=true\nENABLE_HYPERPARAMETER_TUNING=false\nHYPERPARAMETER_TRIALS=10\n"
        "ENABLE_DISTRIBUTED_TRAINING=false\n"
    )
    config = resolve(env_layers(dotenv)).config
    assert (config.model.compile_model, config.run.hyperparameter_trials) == (False, 10)


def test_top_level_keys_with_a_specification_name_are_read_from_toml(tmp_path):
    toml = tmp_path / "llmc.toml"
    toml.write_text("checkpoint_interval = 5\nenable_monitoring = false\nlora_r = 4\n")
    config = resolve([toml_layer(toml)]).config
    assert (config.run.checkpoint_interval, config.run.enable_monitoring, config.lora.lora_r) == (5, False, 4)
