"""``llmc doctor``'s family table: shipped traces, fitted against a budget."""

from dataclasses import asdict

from llmc_cli.config.families import FAMILIES, family_config
from llmc_cli.optimize.families import family_fits, load_table, preset_plan
from llmc_cli.optimize.memory import model_facts

GiB = 2**30


def test_the_shipped_table_matches_the_families_and_presets_of_this_version():
    """A changed preset (LoRA targets, rank) or family shape must regenerate family_traces.json."""
    table = load_table()
    lora, _ = preset_plan("tinyllama", "quality")
    assert table["facts"]["tinyllama/quality"] == asdict(model_facts(family_config(FAMILIES["tinyllama"]), lora))
    assert {key.split("/")[0] for key in table["facts"]} == {name for name, f in FAMILIES.items() if f.shape}


def test_fits_grow_with_the_budget_and_bigger_families_need_more():
    by = lambda fits: {(f.family, f.preset): f for f in fits}  # noqa: E731
    small = by(family_fits("cpu", "fp32", 2 * GiB, "test"))
    medium = by(family_fits("cpu", "fp32", 24 * GiB, "test"))
    large = by(family_fits("cpu", "fp32", 1000 * GiB, "test"))
    assert not any(f.fits for f in small.values())  # 1.1B parameters in fp32 are 4.4 GB of weights alone
    assert medium["tinyllama", "highspeed"].fits and not medium["mistral", "quality"].fits
    assert all(f.fits and not f.gradient_checkpointing for f in large.values())
    for key, fit in medium.items():
        assert fit.micro_batch <= large[key].micro_batch
        if fit.fits:
            assert fit.total_bytes <= 24 * GiB
    # 7B in fp32 needs more than 1.1B at the same preset
    assert large["mistral", "quality"].total_bytes > large["tinyllama", "quality"].total_bytes


def test_four_bit_weights_make_a_family_fit_that_does_not_in_bf16():
    plain = {(f.family, f.preset): f for f in family_fits("cuda", "bf16", 12 * GiB, "test")}
    q4 = {(f.family, f.preset): f for f in family_fits("cuda", "bf16", 12 * GiB, "test", quantize="4bit")}
    assert not plain["mistral", "highspeed"].fits and q4["mistral", "highspeed"].fits
