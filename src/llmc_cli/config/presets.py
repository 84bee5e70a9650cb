"""Presets v2: per family and preset, a base config and dataset-size buckets.

The table lives in ``presets.toml`` beside this module (data, not code) and is validated
on load: every family has every preset, every bucket sets epochs and lr, and every base
key is a real config key.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmc_cli.config.layers import Layer
from llmc_cli.config.schema import FIELD_SECTION, PRESET_NAMES

Bucket = Literal["small", "medium", "large"]
PRESETS_FILE = Path(__file__).with_name("presets.toml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BucketSpec(_Strict):
    epochs: float = Field(gt=0)
    lr: float = Field(gt=0, lt=1)


class PresetSpec(_Strict):
    base: dict[str, Any]
    small: BucketSpec
    medium: BucketSpec
    large: BucketSpec

    @field_validator("base")
    @classmethod
    def _known_keys(cls, base: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(base) - set(FIELD_SECTION))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        return base


class Buckets(_Strict):
    small_below: int = Field(gt=0, description="Datasets with fewer examples are 'small'.")
    large_from: int = Field(gt=0, description="Datasets with at least this many examples are 'large'.")

    @model_validator(mode="after")
    def _ordered(self) -> Buckets:
        if self.large_from <= self.small_below:
            raise ValueError("large_from must be greater than small_below")
        return self

    def bucket(self, n_examples: int) -> Bucket:
        if n_examples < self.small_below:
            return "small"
        return "large" if n_examples >= self.large_from else "medium"


class PresetBook(_Strict):
    """The whole preset table."""

    buckets: Buckets
    families: dict[str, dict[str, PresetSpec]]

    @field_validator("families")
    @classmethod
    def _complete(cls, families: dict[str, dict[str, PresetSpec]]) -> dict[str, dict[str, PresetSpec]]:
        for family, presets in families.items():
            missing = set(PRESET_NAMES) - set(presets)
            extra = set(presets) - set(PRESET_NAMES)
            if missing or extra:
                raise ValueError(f"family {family}: missing {sorted(missing)}, unknown {sorted(extra)}")
        return families

    def layer(self, family: str, preset: str, n_examples: int | None) -> tuple[str, dict[str, Any]]:
        """The preset layer for a family, preset and dataset size.

        Returns:
            A label naming where the values came from (``preset:tinyllama/quality/medium``)
            and the flat keys it sets. Without a dataset size only the base config is
            returned, with the medium bucket's schedule.
        """
        spec = self.families.get(family) or self.families["generic"]
        family_name = family if family in self.families else "generic"
        chosen = spec[preset]
        bucket: Bucket = self.buckets.bucket(n_examples) if n_examples is not None else "medium"
        schedule: BucketSpec = getattr(chosen, bucket)
        values = {**chosen.base, "epochs": schedule.epochs, "lr": schedule.lr}
        return f"preset:{family_name}/{preset}/{bucket}", values


def preset_layer(family: str, preset: str, n_examples: int | None) -> Layer:
    """The preset's layer: a built-in preset from the table, or ``tuned:NAME`` (its base preset from
    the table with the tuned values on top, each named by its origin)."""
    from llmc_cli.config.tuned import is_tuned, tuned_layer

    book = load_presets()
    if is_tuned(preset):
        label, values, origins = tuned_layer(preset, lambda base: book.layer(family, base, n_examples))
        return Layer(label, values, origins)
    return Layer(*book.layer(family, preset, n_examples))


@cache
def load_presets(path: Path = PRESETS_FILE) -> PresetBook:
    """Load and validate the preset table (cached)."""
    with path.open("rb") as handle:
        return PresetBook.model_validate(tomllib.load(handle))
