"""Layered configuration: defaults < preset < llmc.toml < environment and .env < CLI flags.

Each layer is a flat ``{key: value}`` dict with a label. Merging keeps, for every key,
the label of the layer that set it, so ``config.json`` and ``llmc presets show`` can say
where each value came from. pydantic-settings reads the environment and ``.env``;
validation of the merged result is one pydantic call that reports every problem at once.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError, create_model
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from llmc_cli.config.schema import FIELD_SECTION, SECTIONS, SPEC_ENV_KEYS, RunConfig
from llmc_cli.errors import ConfigError

ENV_PREFIX = "LLMC_"


@dataclass(frozen=True)
class Layer:
    """One source of configuration values."""

    label: str
    values: dict[str, Any]
    origins: dict[str, str] = field(default_factory=dict)  # key -> finer label (an env var name)


@dataclass(frozen=True)
class ResolvedConfig:
    """A validated RunConfig and, for every key, the layer that set it."""

    config: RunConfig
    sources: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        """``config.json`` content: the nested config and the source of each flat key."""
        return {"config": self.config.model_dump(mode="json"), "sources": self.sources}


def _env_names(key: str) -> tuple[str, ...]:
    prefixed = ENV_PREFIX + key.upper()
    return (prefixed, key.upper()) if key in SPEC_ENV_KEYS else (prefixed,)


class _EnvReader(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)


# Every key as an optional string: values are validated once, after merging, by RunConfig.
_EnvFields = create_model(  # type: ignore[call-overload]
    "_EnvFields",
    __base__=_EnvReader,
    **{key: (str | None, Field(None, validation_alias=AliasChoices(*_env_names(key)))) for key in FIELD_SECTION},
)
_ALIAS_TO_KEY = {_env_names(key)[0].lower(): key for key in FIELD_SECTION}


def _from_settings_source(raw: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for name, value in raw.items():
        key = _ALIAS_TO_KEY.get(name.lower())
        if key is not None and value is not None:
            values[key] = value
    return values


def env_layers(env_file: Path | None = Path(".env")) -> list[Layer]:
    """The ``.env`` file and the process environment, in that order (environment wins)."""
    layers = []
    if env_file is not None and env_file.is_file():
        dotenv = _from_settings_source(DotEnvSettingsSource(_EnvFields, env_file=env_file)())
        layers.append(Layer(f"dotenv:{env_file}", dotenv))
    environ = _from_settings_source(EnvSettingsSource(_EnvFields)())
    upper_env = {name.upper() for name in os.environ}
    origins = {key: next(n for n in _env_names(key) if n in upper_env) for key in environ}
    layers.append(Layer("env", environ, {key: f"env:{name}" for key, name in origins.items()}))
    return layers


def toml_layer(path: Path) -> Layer:
    """Read ``llmc.toml``: flat keys at the top, or grouped under [model], [data], [lora], ..."""
    if not path.is_file():
        raise ConfigError(
            f"Config file {path} does not exist.",
            hint="Pass an existing file to --config, or start from llmc.toml.example.",
        )
    try:
        raw = TomlConfigSettingsSource(_EnvFields, toml_file=path)()
    except Exception as exc:  # tomllib.TOMLDecodeError carries the line and column
        raise ConfigError(f"{path} is not valid TOML: {exc}.", hint="Fix the line named above.") from exc
    values: dict[str, Any] = {}
    problems = []
    for name, value in raw.items():
        # The settings source reports a top-level key that has several environment names
        # (checkpoint_interval: LLMC_CHECKPOINT_INTERVAL or CHECKPOINT_INTERVAL) by its first one.
        key = _ALIAS_TO_KEY.get(name.lower(), name)
        if key in SECTIONS and isinstance(value, dict):
            for inner, inner_value in value.items():
                if FIELD_SECTION.get(inner) != key:
                    problems.append(_unknown_key(f"[{key}] {inner}", inner))
                values[inner] = inner_value
        elif key in FIELD_SECTION:
            values[key] = value
        else:
            problems.append(_unknown_key(key, key))
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems) + ".", hint="See llmc.toml.example for every key.")
    return Layer(f"toml:{path}", values)


def toml_value(value: Any) -> str:
    """A config value as TOML (a basic string is written as a JSON string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, tuple | list):
        return json.dumps(list(value))
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _unknown_key(where: str, key: str) -> str:
    close = difflib.get_close_matches(key, FIELD_SECTION, n=1)
    return f"unknown key '{where}'" + (f" (did you mean '{close[0]}'?)" if close else "")


def cli_layer(flags: dict[str, Any]) -> Layer:
    """Flags the user actually passed (None means not given)."""
    return Layer("cli", {key: value for key, value in flags.items() if value is not None})


def merge(layers: list[Layer]) -> tuple[dict[str, Any], dict[str, str]]:
    """Later layers win; returns the merged values and the source of each key."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        for key, value in layer.values.items():
            values[key] = value
            sources[key] = layer.origins.get(key, layer.label)
    return values, sources


def problem_text(error: dict) -> str:
    """A pydantic error's message without the "Value error, " that pydantic puts before a validator's own."""
    return error["msg"].removeprefix("Value error, ")


def resolve(layers: list[Layer]) -> ResolvedConfig:
    """Merge layers over the defaults and validate, reporting every bad value at once."""
    values, sources = merge(layers)
    try:
        config = RunConfig.from_flat(values)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            key = str(error["loc"][1]) if len(error["loc"]) > 1 else str(error["loc"][0])
            origin = sources.get(key, "default")
            shown = f" = {values[key]!r}" if key in values else ""
            lines.append(f"  {key}{shown} (from {origin}): {problem_text(error)}")
        raise ConfigError(
            "Invalid configuration:\n" + "\n".join(lines),
            hint="Correct these values where they were set (flag, llmc.toml, environment or .env).",
        ) from None
    all_sources = {key: sources.get(key, "default") for key in FIELD_SECTION}
    return ResolvedConfig(config, all_sources)
