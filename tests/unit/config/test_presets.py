import pytest

from llmc_cli.config.layers import Layer, resolve
from llmc_cli.config.presets import load_presets
from llmc_cli.config.schema import PRESET_NAMES

BOOK = load_presets()


@pytest.mark.parametrize("family", ["tinyllama", "phi", "mistral", "qwen", "generic"])
@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("size", [10, 5000, 50000])
def test_every_preset_resolves_to_a_valid_config(family, preset, size):
    label, values = BOOK.layer(family, preset, size)
    resolved = resolve([Layer(label, values)])
    assert resolved.sources["lr"] == label
    assert resolved.config.training.epochs == values["epochs"]


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("highspeed", [(2, 1e-3), (1, 8e-4), (1, 5e-4)]),
        ("quality", [(5, 3e-4), (3, 5e-4), (2, 5e-4)]),
        ("bestaccuracy", [(8, 1e-4), (5, 2e-4), (3, 3e-4)]),
    ],
)
def test_tinyllama_schedule_matches_the_specification(preset, expected):
    got = [
        (values["epochs"], values["lr"])
        for _, values in (BOOK.layer("tinyllama", preset, n) for n in (999, 1000, 10000))
    ]
    assert got == expected


def test_buckets_and_unknown_family():
    assert [BOOK.buckets.bucket(n) for n in (0, 999, 1000, 9999, 10000)] == [
        "small",
        "small",
        "medium",
        "medium",
        "large",
    ]
    label, _ = BOOK.layer("falcon", "quality", 50)
    assert label == "preset:generic/quality/small"


def test_bad_preset_table_is_rejected(tmp_path):
    from pydantic import ValidationError

    from llmc_cli.config.presets import PresetBook

    with pytest.raises(ValidationError, match="unknown config keys"):
        PresetBook.model_validate(
            {
                "buckets": {"small_below": 10, "large_from": 100},
                "families": {
                    "x": {
                        name: {
                            "base": {"lora_rank": 8},
                            **{b: {"epochs": 1, "lr": 1e-4} for b in ("small", "medium", "large")},
                        }
                        for name in PRESET_NAMES
                    }
                },
            }
        )
