"""A study's best trial as settings to train with: ``llmc tune best`` and ``llmc train --from-study``.

A study records what its trials shared (data, model, preset, config file, example limit: its
"base") and each trial the values it trained with, searched and derived (LoRA alpha follows the
rank at the preset's ratio when only the rank is searched). The best configuration is the base with
the best trial's values on top, without the study's per-trial step budget: the full run the study
was a search for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmc_cli.config.layers import Layer, cli_layer, env_layers, toml_layer, toml_value
from llmc_cli.errors import ConfigError

# Keys a trial sets for the search itself, not as part of the configuration it found.
SEARCH_ONLY = ("max_steps", "eval_every", "output", "run_name", "report_to")


@dataclass(frozen=True)
class Best:
    """The study's best complete trial: what it trained with, on what base."""

    study: str
    number: int
    value: float
    values: dict[str, Any]  # the searched and derived config values of the trial
    base: dict[str, Any]  # data, model, preset, config_file, overrides

    @property
    def label(self) -> str:
        return f"study:{self.study}#{self.number}"

    def layer(self) -> Layer:
        """The study's data, model, preset and limit with the trial's values on top, as one layer."""
        shared = {key: self.base.get(key) for key in ("data", "model", "preset")}
        merged = {**shared, **self.base.get("overrides", {}), **self.values}
        return Layer(self.label, {key: value for key, value in merged.items() if value is not None})

    def layers(self, flags: dict[str, Any], config_file: Path | None = None,
               env_file: Path | None = Path(".env")) -> list[Layer]:  # fmt: skip
        """A run's layers, lowest first: the study's config file (or ``config_file``), the
        environment, the study's best, then the caller's flags."""
        config = toml_layer(config_file) if config_file is not None else self.config_layer()
        return [*([config] if config is not None else []), *env_layers(env_file), self.layer(), cli_layer(flags)]

    def config_layer(self) -> Layer | None:
        """The study's config file, as its trials read it."""
        path = self.base.get("config_file")
        if path is None:
            return None
        if not Path(path).is_file():
            raise ConfigError(
                f"The study's config file {path} is gone.",
                hint="Restore it, or export the best settings with llmc tune best --export FILE and edit that.",
            )
        return toml_layer(Path(path))


def record_base(study, data: Path, model: str | None, preset: str | None, config_file: Path | None,
                overrides: dict[str, Any]) -> None:  # fmt: skip
    """Store what every trial of a new study shares, so its best can be trained again later."""
    if "base" in study.user_attrs:
        return
    from llmc_cli.engine.plan import DEFAULT_CONFIG

    kept = {k: v for k, v in overrides.items() if k not in SEARCH_ONLY and v is not None}
    if config_file is None and DEFAULT_CONFIG.is_file():  # the trials read ./llmc.toml
        config_file = DEFAULT_CONFIG
    study.set_user_attr(
        "base",
        {
            "data": str(Path(data).resolve()),
            "model": model if model is None or not Path(model).exists() else str(Path(model).resolve()),
            "preset": preset,
            "config_file": str(Path(config_file).resolve()) if config_file is not None else None,
            "overrides": json.loads(json.dumps(kept, default=str)),
        },
    )


def find_best(study: str | Path, output: Path = Path("runs"), storage: str | None = None) -> Best:
    """The best trial of the study named ``study`` under ``output`` (or at folder ``study``)."""
    from llmc_cli.tune.study import load_study

    folder = Path(study) if Path(study).is_dir() else Path(output) / str(study)
    return best_of(load_study(folder, folder.name, storage))


def best_of(study) -> Best:
    """The best complete trial of ``study``.

    Raises:
        ConfigError: no trial has completed yet.
    """
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not complete:
        raise ConfigError(
            f"Study {study.study_name} has no complete trial yet.",
            hint=f"Run trials first: llmc tune --study {study.study_name} (see llmc tune show).",
        )
    trial = min(complete, key=lambda t: t.value)
    values = {k: v for k, v in trial.user_attrs.get("values", trial.params).items() if k not in SEARCH_ONLY}
    base = study.user_attrs.get("base") or {}
    return Best(study.study_name, trial.number, float(trial.value), values, base)


def export(path: Path, best: Best) -> None:
    """A self-contained ``llmc.toml``: the study's preset, model, config file and limit, with the best
    trial's values on top (``llmc train --config PATH --data ...``)."""
    from llmc_cli.durable import write_text

    merged: dict[str, Any] = {}
    config = best.config_layer()
    if config is not None:
        merged.update(config.values)
    merged.update(best.layer().values)
    merged.pop("data", None)  # the data is named when training: the file may move or grow
    lines = [
        f"# llmc tune: the best trial ({best.number}, eval loss {best.value:.4f}) of study {best.study},",
        f"# searched on {best.base.get('data', 'its data')}. Train with: llmc train --config {path.name} --data FILE",
    ]
    lines += [f"{key} = {toml_value(value)}" for key, value in merged.items() if value is not None]
    write_text(path, "\n".join(lines) + "\n")


def export_preset(name: str, best: Best) -> Path:
    """Write the best trial's values as the tuned preset ``tuned:NAME`` over the study's preset."""
    from llmc_cli.config.tuned import is_tuned, load_tuned, write_tuned

    config = best.config_layer()
    preset = best.base.get("preset") or (config.values.get("preset") if config is not None else None) or "quality"
    values = dict(best.values)
    if is_tuned(preset):  # a study over a tuned preset: its values stay under the new ones
        earlier = load_tuned(preset)
        preset, values = earlier.base, {**earlier.values, **values}
    comment = (f"llmc tune: the best trial ({best.number}, eval loss {best.value:.4f}) of study {best.study},\n"
               f"searched on {best.base.get('data', 'its data')} with {best.base.get('model') or 'its model'}.\n"
               f"Use it with: llmc train --preset tuned:{name} --data FILE --model MODEL")  # fmt: skip
    return write_tuned(name, preset, values, comment)
