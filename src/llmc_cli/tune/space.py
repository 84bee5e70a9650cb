"""What ``llmc tune`` searches: a dimension per config key, from the preset or a user's TOML.

A space file has one table per config key::

    [lr]
    low = 1e-5
    high = 1e-3
    log = true

    [lora_r]
    choices = [8, 16, 32]

A table gives either ``low``/``high`` (with ``log``, and ``step`` for integers) or ``choices``;
integer keys get integer ranges. Every bound and choice is checked as a value of that key, as
any llmc config is, so a mistake is reported with the key and the fix before a trial starts.
``lora_alpha`` follows ``lora_r`` (the preset's alpha / r is kept) unless the space names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
from pydantic import ValidationError

from llmc_cli.config.layers import problem_text
from llmc_cli.config.schema import FIELD_SECTION, RunConfig
from llmc_cli.errors import ConfigError

# Keys a trial may not change: they decide what is trained on and where it goes, not how well.
FIXED_KEYS = ("data", "val_data", "model", "output", "run_name", "limit", "max_steps", "seed", "format", "preset")


@dataclass(frozen=True)
class Dimension:
    """One searched key: a range (``low``..``high``, ``log``, ``step``) or a list of ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    integer: bool = False

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)

    def grid(self) -> list[Any]:
        """The values a grid search tries: the choices, or every step of an integer range."""
        if self.choices is not None:
            return list(self.choices)
        if self.integer and not self.log:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is not None and not self.log:
            count = round((self.high - self.low) / self.step)
            return [round(self.low + i * self.step, 12) for i in range(count + 1)]
        raise ConfigError(
            f"The search space's '{self.key}' is a continuous range, which a grid cannot enumerate.",
            hint=f"Give '{self.key}' a list of choices (choices = [...]) or a step, or use --method tpe/random.",
        )

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.choices is not None:
            return ", ".join(map(str, self.choices))
        scale = " (log)" if self.log else ""
        return f"{self.low:g} .. {self.high:g}{scale}"


@dataclass(frozen=True)
class Space:
    dimensions: tuple[Dimension, ...]

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def suggest(self, trial) -> dict[str, Any]:
        return {d.key: d.suggest(trial) for d in self.dimensions}

    def grid(self) -> dict[str, list[Any]]:
        return {d.key: d.grid() for d in self.dimensions}

    def start(self, config: RunConfig) -> dict[str, Any]:
        """The config's own values for the searched keys (the preset's trial), where the space holds them."""
        flat = {k: ",".join(v) if isinstance(v, list | tuple) else v for k, v in config.flat().items()}
        return {d.key: flat[d.key] for d in self.dimensions if d.contains(flat[d.key])}


def default_space(config: RunConfig) -> Space:
    """A space around the resolved config (preset and data rules): the learning rate a factor of 4
    either way (log), LoRA rank, dropout, the preset's target modules or all linear layers, warm-up
    and weight decay."""
    lora, training = config.lora, config.training
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ",".join(lora.target_modules)
    modules = tuple(dict.fromkeys([targets, "all-linear"]))
    ranks = tuple(sorted({4, 8, 16, 32, lora.lora_r}))
    decays = tuple(sorted({0.0, 0.01, 0.1, training.weight_decay}))
    return Space(
        (
            Dimension("lr", training.lr / 4, min(training.lr * 4, 0.5), log=True),
            Dimension("lora_r", choices=ranks),
            Dimension("lora_dropout", 0.0, max(0.2, lora.lora_dropout)),
            Dimension("target_modules", choices=modules),
            Dimension("warmup_ratio", 0.0, max(0.1, training.warmup_ratio)),
            Dimension("weight_decay", choices=decays),
        )
    )


def load_space(path: Path) -> Space:
    """A space from a TOML file, every key and value checked.

    Raises:
        ConfigError: an unreadable file, an unknown key, a malformed table or a bad value.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Search space file {path} does not exist.", hint="Check --space.") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Cannot read the search space {path}: {exc}.", hint="Fix the TOML syntax.") from None
    if not raw:
        raise ConfigError(f"The search space {path} names no key.", hint="Add a table per key, e.g. [lr] low/high.")
    return Space(tuple(_dimension(path, key, table) for key, table in raw.items()))


def _dimension(path: Path, key: str, table: Any) -> Dimension:
    where = f"{path}: [{key}]"
    if key not in FIELD_SECTION:
        raise ConfigError(f"{where} is not an llmc config key.", hint="See llmc.toml.example for the keys.")
    if key in FIXED_KEYS:
        raise ConfigError(f"{where} cannot be searched: it decides what is trained, not how.", hint="Remove it.")
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table.", hint=f"Write [{key}] with low/high or choices.")
    unknown = set(table) - {"low", "high", "log", "step", "choices"}
    if unknown:
        raise ConfigError(f"{where} has unknown fields {sorted(unknown)}.", hint="Use low, high, log, step or choices.")
    if "choices" in table:
        if set(table) != {"choices"} or not isinstance(table["choices"], list) or not table["choices"]:
            raise ConfigError(f"{where}: choices must be a non-empty list, alone.", hint="choices = [8, 16, 32]")
        values = [_checked(where, key, value) for value in table["choices"]]
        return Dimension(key, choices=tuple(values))
    if not {"low", "high"} <= set(table):
        raise ConfigError(f"{where} needs low and high, or choices.", hint="e.g. low = 1e-5 and high = 1e-3")
    low, high = _checked(where, key, table["low"]), _checked(where, key, table["high"])
    if not isinstance(low, int | float) or isinstance(low, bool):
        raise ConfigError(f"{where}: {key} is not numeric, so it needs choices.", hint="choices = [...]")
    if low >= high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high}).", hint="Swap or widen them.")
    log, step = bool(table.get("log", False)), table.get("step")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0.", hint="Raise low, or set log = false.")
    if log and step is not None:
        raise ConfigError(f"{where}: log and step cannot be combined.", hint="Remove one of them.")
    integer = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
    return Dimension(key, float(low), float(high), log, step, None, integer)


def _checked(where: str, key: str, value: Any) -> Any:
    """``value`` as the config would hold it for ``key``, or a ConfigError naming the problem."""
    try:
        parsed = RunConfig().with_updates(**{key: value}).flat()[key]
    except ValidationError as exc:
        problem = problem_text(exc.errors()[0])
        raise ConfigError(f"{where}: {value!r} is not a valid {key}: {problem}.", hint="Fix the value.") from None
    if isinstance(value, str) or (isinstance(value, int) and isinstance(parsed, float)):
        return value  # as written: a module list stays one string (Optuna's choices are scalars)
    return parsed
