"""The wizard's answers: each one a flag too, recordable and replayable, and the ``llmc.toml`` they make.

The file written is a pure function of the answers (no date, host or version in it), so the same
answers give a byte-identical ``llmc.toml``. Answers are validated by the run's own schema when
the file is written (config/layers.py), so a bad value is refused with the key and the fix.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from llmc_cli.config.layers import toml_value
from llmc_cli.errors import ConfigError

# Answer -> the flag that gives it without a question (the error for a missing answer names it).
FLAGS = {
    "data": "--data",
    "model": "--model",
    "preset": "--preset",
    "checkpoint_interval": "--checkpoint-interval",
    "max_checkpoints": "--max-checkpoints",
    "report_to": "--report-to",
    "output": "--output",
    "start": "--start/--no-start",
}
TYPES = {  # answer -> (JSON type, as the error says it)
    "data": (str, "a path"),
    "model": (str, "a folder, hub id or family"),
    "preset": (str, "a preset name"),
    "checkpoint_interval": (int, "a whole number"),
    "max_checkpoints": (int, "a whole number"),
    "report_to": (list, "a list of tracker names"),
    "output": (str, "a folder"),
    "start": (bool, "true or false"),
}
TOML_KEYS = ("data", "model", "preset", "output", "checkpoint_interval", "max_checkpoints", "report_to")
HEADER = (
    "# llmc.toml, written by llmc setup. Train with: llmc train{config}\n"
    "# Flags, LLMC_* environment variables and .env override these values; llmc.toml.example lists every key.\n"
)


@dataclass
class Answers:
    """What the wizard asks; None means not answered yet."""

    data: str | None = None
    model: str | None = None
    preset: str | None = None
    checkpoint_interval: int | None = None
    max_checkpoints: int | None = None
    report_to: list[str] | None = None
    output: str | None = None
    start: bool | None = None

    def merged(self, other: Answers) -> Answers:
        """These answers with ``other``'s where these have none."""
        return Answers(**{f.name: _first(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def _first(a, b):
    return a if a is not None else b


def load_answers(path: Path) -> Answers:
    """A recorded session (``--record``) for ``--answers``: a JSON object of answers."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read the answers file {path}: {exc.strerror or exc}.",
                          hint="Pass a file written by llmc setup --record FILE.") from None  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}.", hint="Fix the line named above.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object of answers.", hint="See llmc setup --record FILE.")
    unknown = sorted(set(raw) - set(FLAGS))
    if unknown:
        raise ConfigError(f"{path}: unknown answer(s) {', '.join(unknown)}.", hint=f"Answers are: {', '.join(FLAGS)}.")
    if isinstance(raw.get("report_to"), str):
        raw["report_to"] = [name for name in raw["report_to"].split(",") if name.strip() and name != "none"]
    wrong = [f"{key} should be {TYPES[key][1]}" for key, value in raw.items() if not _is(value, TYPES[key][0])]
    if wrong:
        raise ConfigError(f"{path}: " + "; ".join(wrong) + ".", hint="Fix those answers, or record them again.")
    return Answers(**raw)


def _is(value: Any, kind: type) -> bool:
    if kind is list:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def save_answers(path: Path, answers: Answers) -> None:
    from llmc_cli.durable import write_text

    write_text(path, json.dumps(answers.to_dict(), indent=2, sort_keys=True) + "\n")


def render_toml(answers: Answers, config_path: Path) -> str:
    """The ``llmc.toml`` text for ``answers``, checked by the run's schema.

    Raises:
        ConfigError: a value the run would refuse (named with its key).
    """
    from llmc_cli.config.layers import Layer, resolve

    values = {key: getattr(answers, key) for key in TOML_KEYS if getattr(answers, key) is not None}
    resolve([Layer(f"llmc setup answers ({config_path})", values)])
    config = "" if config_path == Path("llmc.toml") else f" --config {config_path}"
    lines = [HEADER.format(config=config)]
    lines += [f"{key} = {toml_value(values[key])}\n" for key in TOML_KEYS if key in values]
    return "".join(lines)
