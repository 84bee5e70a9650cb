"""Plan a run before anything heavy happens: config layers, data validation, model source.

Order matters for the user: configuration errors first, then data errors (the data is
read and validated in full), then the model, and only then does training load weights.
The preset layer needs the model family and the dataset size, so it is added last, but
sits under the user's layers: defaults < preset < llmc.toml < env/.env < CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmc_cli.config.layers import Layer, ResolvedConfig, cli_layer, env_layers, resolve, toml_layer
from llmc_cli.config.presets import preset_layer
from llmc_cli.config.tuned import is_tuned, load_tuned
from llmc_cli.data.scan import DataScan, scan
from llmc_cli.errors import ConfigError
from llmc_cli.models.source import ModelSource, resolve_model
from llmc_cli.paths import cache_dir, data_cache_dir


@dataclass(frozen=True)
class RunPlan:
    """Everything decided before training starts."""

    resolved: ResolvedConfig
    source: ModelSource
    data: DataScan
    notes: list[str] = field(default_factory=list)
    why: list[dict[str, Any]] = field(default_factory=list)  # the rules behind fitted values (engine/fit.py)
    memory: dict[str, Any] | None = None  # the memory estimate and budget (engine/fit.py)
    warnings: list[str] = field(default_factory=list)  # what the run should say when it starts
    profile: dict[str, Any] | None = None  # the data's token lengths the data rules read (engine/fit.py)

    def record(self) -> dict[str, Any]:
        """``config.json``: the resolved config with each value's source, the why table, the data's
        length profile and the memory estimate."""
        return {**self.resolved.to_json(), "why": self.why, "data_profile": self.profile, "memory": self.memory}


def demo_layer() -> Layer:
    """Values that ``--demo`` supplies: the bundled data and a locally built model."""
    from llmc_cli.demo.build import DEMO_DATA, ensure_demo_model

    model_dir = ensure_demo_model(cache_dir())
    # The demo's base model is random, so it adapts every linear layer to show learning in minutes.
    values = {
        "data": str(DEMO_DATA),
        "model": str(model_dir),
        "preset": "highspeed",
        "target_modules": "all-linear",
        "lora_r": 16,
        "lora_alpha": 32,
    }
    return Layer("demo", values)


DEFAULT_CONFIG = Path("llmc.toml")


def user_layers(
    flags: dict[str, Any], config_file: Path | None = None, env_file: Path | None = Path(".env"), demo: bool = False
) -> list[Layer]:
    """The layers above the preset, lowest first; ``./llmc.toml`` is read when no file is named."""
    layers = [demo_layer()] if demo else []
    if config_file is None and DEFAULT_CONFIG.is_file():
        config_file = DEFAULT_CONFIG
    if config_file is not None:
        layers.append(toml_layer(config_file))
    return [*layers, *env_layers(env_file), cli_layer(flags)]


def plan_run(layers: list[Layer]) -> RunPlan:
    """Validate the user's config and data, find the model, and apply the preset."""
    user = resolve(layers).config  # reports bad values before reading any data
    if user.data.data is None:
        raise ConfigError("No training data given.", hint="Pass --data FILE (or try --demo).")
    if is_tuned(user.run.preset):
        load_tuned(user.run.preset)  # a missing tuned preset is named before the data is read
    data = scan(user.data, data_cache_dir(user.data.data_cache))
    auto_family = _auto_family() if user.model.model == "auto" else None
    source = resolve_model(user.model.model, auto_family)
    resolved = resolve([preset_layer(source.family.name, user.run.preset, data.train_records), *layers])
    return RunPlan(resolved, source, data, list(data.notes))


def _auto_family() -> str:
    from llmc_cli.optimize.hardware import detect, pick_family

    return pick_family(detect())[0]


def preview(preset: str, model: str, data: Path | None = None, config_file: Path | None = None) -> ResolvedConfig:
    """The config a run would get, without the network: ``model`` is a family or a local folder.

    With ``data`` the dataset-size bucket is computed from the file (after the validation
    split); without it the medium bucket is shown.
    """
    from llmc_cli.config.families import FAMILIES

    flags = {"preset": preset, "data": data, "model": model}
    layers = user_layers(flags, config_file=config_file)
    user = resolve(layers).config
    if model in FAMILIES:
        family = model
    else:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise ConfigError(
                f"'{model}' is neither a model family nor a local model folder.",
                hint="Use --model " + ", --model ".join(sorted(FAMILIES)) + ", or a folder with config.json.",
            )
        family = resolve_model(str(path)).family.name
    n_train = scan(user.data, data_cache_dir(user.data.data_cache)).train_records if data is not None else None
    return resolve([preset_layer(family, user.run.preset, n_train), *layers])
