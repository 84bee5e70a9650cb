"""The preset and model recommendations: by the data's size bucket, then by what fits this machine."""

from pathlib import Path

import pytest

from llmc_cli.setup.assess import Option, assess_presets
from llmc_cli.setup.recommend import bucket_of, recommend_model, recommend_preset

GiB = 2**30


def _options(fits=("highspeed", "quality", "bestaccuracy"), hours=None):
    hours = hours or {}
    return [
        Option(name, "m", fits=name in fits, peak_bytes=GiB * (i + 1), budget_bytes=GiB * 2, steps=100,
               seconds=hours.get(name, 0.1) * 3600)
        for i, name in enumerate(("highspeed", "quality", "bestaccuracy"))
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("examples", "bucket", "preset"),
    [(300, "small", "bestaccuracy"), (5_000, "medium", "quality"), (50_000, "large", "highspeed")],
)
def test_the_dataset_size_picks_the_preset(examples, bucket, preset):
    assert bucket_of(examples) == bucket
    assert recommend_preset(_options(), bucket).choice == preset


def test_a_preset_that_does_not_fit_gives_way_to_the_next_cheaper_one():
    choice = recommend_preset(_options(fits=("highspeed", "quality")), "small")
    assert choice.choice == "quality"
    assert "bestaccuracy does not fit" in choice.reason and "3.00 GiB" in choice.reason


def test_a_preset_over_twelve_hours_gives_way_when_a_cheaper_one_fits():
    assert recommend_preset(_options(hours={"quality": 20}), "medium").choice == "highspeed"
    only = [o for o in _options(hours={"quality": 20}) if o.preset == "quality"]
    assert recommend_preset(only, "medium").choice == "quality"  # nothing cheaper: the long one stays


def test_when_nothing_fits_the_least_demanding_preset_is_named_with_the_reason():
    choice = recommend_preset(_options(fits=()), "medium")
    assert choice.choice == "highspeed" and "no preset fits" in choice.reason


def test_with_nothing_planned_the_size_alone_decides_and_says_why():
    unplanned = [Option(name, "tinyllama", error="the hub cannot be reached") for name in ("highspeed", "quality")]
    choice = recommend_preset(unplanned, "medium")
    assert choice.choice == "quality" and "by the data's size only" in choice.reason


def test_the_largest_local_model_that_fits_is_recommended():
    models = [("big", False, 10.0), ("medium", True, 50 * 3600.0), ("small", True, 600.0)]
    assert recommend_model(models).choice == "small"  # medium fits but takes over 12 h an epoch
    assert recommend_model([("big", False, 1.0)]) is None


def test_the_real_estimator_steps_down_from_bestaccuracy_on_a_small_machine(tiny_model_dir, gsm8k_train, tmp_path):
    """A budget between the least quality and the least bestaccuracy need (micro-batch 1 with checkpointing,
    as the estimator reports when nothing fits): quality fits, bestaccuracy's 2048-token rows do not."""
    data = tmp_path / "small.jsonl"
    data.write_text("".join(gsm8k_train.read_text().splitlines(keepends=True)[:160]))
    least = {o.preset: o.peak_bytes for o in assess_presets(data, str(tiny_model_dir), {"memory_budget": 0.01})}
    assert least["quality"] < least["bestaccuracy"], least
    budget = (least["quality"] + least["bestaccuracy"]) / 2 / GiB
    options = assess_presets(Path(data), str(tiny_model_dir), {"memory_budget": budget})
    fits = {o.preset: o.fits for o in options}
    assert fits == {"highspeed": True, "quality": True, "bestaccuracy": False}, [o.to_dict() for o in options]
    assert recommend_preset(options, bucket_of(options[0].train_records)).choice == "quality"


def test_a_family_s_epoch_is_probed_at_its_preset_s_lora_rank(monkeypatch):
    import llmc_cli.optimize.layerprobe as layerprobe
    from llmc_cli.setup.assess import family_epoch_seconds

    probed = []
    monkeypatch.setattr(layerprobe, "layer_speed", lambda hidden, precision, device, rank: probed.append(rank) or 1e11)
    sample = Option("quality", "m", train_records=100, mean_tokens=200.0, mean_targets=80.0)
    presets = ("highspeed", "bestaccuracy")
    seconds = {p: family_epoch_seconds("mistral", p, False, "bf16", "cpu", sample) for p in presets}
    assert probed == [8, 64] and 0 < seconds["highspeed"] < seconds["bestaccuracy"]
