"""Tuned presets: a study's best values on top of a built-in preset, used as ``--preset tuned:NAME``.

``llmc tune best STUDY --export NAME`` writes ``NAME.toml`` into the tuned-preset folder
(``$LLMC_PRESETS``, else ``$XDG_CONFIG_HOME/llmc/presets``, else ``~/.config/llmc/presets``):
the built-in preset it was tuned from (``base``) and the values the best trial trained with. A run
with ``--preset tuned:NAME`` gets the base preset for its model family and data size, with the
tuned values on top, sourced ``tuned:NAME`` (``llmc train --dry-run``); the data rules change the
base preset's values, never the tuned ones.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from llmc_cli.config.schema import FIELD_SECTION, PRESET_NAMES
from llmc_cli.errors import ConfigError

PREFIX = "tuned:"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def presets_dir() -> Path:
    """``$LLMC_PRESETS``, else ``$XDG_CONFIG_HOME/llmc/presets``, else ``~/.config/llmc/presets``."""
    if "LLMC_PRESETS" in os.environ:
        return Path(os.environ["LLMC_PRESETS"]).expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "llmc" / "presets"


@dataclass(frozen=True)
class TunedPreset:
    name: str
    base: str  # the built-in preset it was tuned from
    values: dict[str, Any]
    path: Path


def is_tuned(preset: str) -> bool:
    return preset.startswith(PREFIX)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ConfigError(f"Tuned preset name '{name}' is not a plain name.", hint="Use letters, digits, . _ -")
    return name


def write_tuned(name: str, base: str, values: dict[str, Any], comment: str) -> Path:
    """Write ``NAME.toml``; an existing preset of that name is refused, not overwritten."""
    from llmc_cli.config.layers import toml_value
    from llmc_cli.durable import write_text

    path = presets_dir() / f"{check_name(name)}.toml"
    if path.exists():
        raise ConfigError(f"A tuned preset '{name}' already exists ({path}).", hint="Choose another name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"base = {toml_value(base)}", *(f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None)]
    write_text(path, "\n".join(lines) + "\n")
    return path


def load_tuned(preset: str) -> TunedPreset:
    """Read ``tuned:NAME``.

    Raises:
        ConfigError: no such preset (the known ones are named), or a file with unknown keys.
    """
    name = check_name(preset.removeprefix(PREFIX))
    path = presets_dir() / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in presets_dir().glob("*.toml"))
        listed = f" Known: {', '.join(PREFIX + k for k in known)}." if known else ""
        raise ConfigError(
            f"No tuned preset '{name}' in {presets_dir()}.{listed}",
            hint=f"Export one from a study: llmc tune best STUDY --export {name} (or set LLMC_PRESETS).",
        )
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.", hint="Fix it, or export it again.") from None
    base = values.pop("base", None)
    unknown = sorted(k for k in values if k not in FIELD_SECTION or k in ("preset", "data", "model"))
    if base not in PRESET_NAMES or unknown:
        problem = f"base = {base!r} is not a built-in preset" if base not in PRESET_NAMES else f"keys {unknown}"
        raise ConfigError(f"{path}: {problem}.", hint="Export it again with llmc tune best STUDY --export NAME.")
    return TunedPreset(name, base, values, path)


def tuned_layer(preset: str, builtin) -> tuple[str, dict[str, Any], dict[str, str]]:
    """The layer for ``tuned:NAME``: ``builtin(base)`` gives the base preset's label and values;
    returns the label, the merged values and the origin of each tuned value."""
    tuned = load_tuned(preset)
    label, values = builtin(tuned.base)
    origin = f"{PREFIX}{tuned.name}"  # not "preset:...": the data rules keep tuned values as they keep yours
    return label, {**values, **tuned.values}, dict.fromkeys(tuned.values, origin)
