"""OPTIMIZE_MEMORY in a real run: under a memory budget the micro-batch shrinks to what fits, and
every step still trains on the same rows as the un-fitted plan."""

from __future__ import annotations

import json

from llmc_cli import FineTuner

GiB = 2**30
OPTS = dict(preset="highspeed", max_length=128, batch_size=4, grad_accum=2, max_steps=3, limit=80, lora_dropout=0.0,
            target_modules="all-linear", env_file=None)  # fmt: skip


def step_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "train"]


def test_a_budget_shrinks_the_micro_batch_and_keeps_the_rows_of_every_step(tmp_path, tiny_model_dir, gsm8k_train):
    plain = FineTuner(gsm8k_train, model=str(tiny_model_dir), output=tmp_path / "runs", optimize_memory=False, **OPTS)
    memory = plain.plan().memory
    assert memory["micro_batch"] == 4 and memory["total_bytes"] > 0 and not memory["approximate"]

    # A budget (the whole estimate must fit in it) between the estimates for micro-batches of 2 and 3.
    from llmc_cli.models.kind import load_config
    from llmc_cli.optimize.memory import MemoryModel, model_facts

    cfg, precision = plain.plan().resolved.config, plain.plan().why[0]["value"]
    config = load_config(str(tiny_model_dir))
    model = MemoryModel(config, model_facts(config, cfg.lora), cfg.lora, device="cpu", precision=precision,
                        quantize="none", seq_len=128)  # fmt: skip
    two, three = model.estimate(2, False, 8).total_bytes, model.estimate(3, False, 8).total_bytes  # 8 rows a step
    assert two < three and memory["total_bytes"] == model.estimate(4, False, 8).total_bytes
    budget = (two + three) / 2 / GiB
    fitted = FineTuner(gsm8k_train, model=str(tiny_model_dir), output=tmp_path / "runs", memory_budget=budget, **OPTS)
    plan = fitted.plan()
    assert plan.resolved.config.training.micro_batch == 2, plan.why
    assert plan.resolved.sources["micro_batch"] == "optimize_memory"
    assert (plan.resolved.config.training.batch_size, plan.resolved.config.training.grad_accum) == (4, 2)

    a, b = plain.train(), fitted.train()
    saved = json.loads((b / "config.json").read_text())
    assert saved["config"]["training"]["micro_batch"] == 2 and saved["why"] == plan.why
    left, right = step_records(a), step_records(b)
    assert [(r["tokens"], r["target_tokens"], r["examples"]) for r in left] == [
        (r["tokens"], r["target_tokens"], r["examples"]) for r in right
    ]
    for x, y in zip(left, right, strict=True):  # no dropout: the same rows give the same loss, up to rounding
        assert abs(x["loss"] - y["loss"]) <= 1e-4 * abs(x["loss"]), (x["loss"], y["loss"])
    summary = json.loads((b / "summary.json").read_text())
    assert summary["recovery"]["split"] == 1  # the fit, not out-of-memory recovery, chose the micro-batch


def test_the_data_rules_fit_the_preset_to_a_small_dataset_and_keep_what_the_user_set(
    tmp_path, tiny_model_dir, gsm8k_train
):
    opts = dict(model=str(tiny_model_dir), output=tmp_path / "runs", preset="quality", limit=150, lora_dropout=0.0,
                env_file=None)  # fmt: skip
    fitted = FineTuner(gsm8k_train, **opts).plan()
    plain = FineTuner(gsm8k_train, optimize_for_data=False, **opts).plan()
    before, after, sources = plain.resolved.config, fitted.resolved.config, fitted.resolved.sources

    assert (before.training.grad_accum, before.lora.lora_r, before.training.warmup_ratio) == (4, 16, 0.03)
    # ~130 training examples, a few hundred tokens each, packed into 1024-token rows: a handful of
    # rows, so every rule for a small dataset fires.
    assert after.training.grad_accum == 1 and sources["grad_accum"] == "optimize_for_data"
    assert after.lora.lora_r == 8 and after.lora.lora_alpha == 16.0 and sources["lora_r"] == "optimize_for_data"
    assert after.training.weight_decay == 0.01 and after.training.warmup_ratio == 0.1
    assert after.lora.lora_dropout == 0.0 and sources["lora_dropout"] == "cli"  # set by the user: kept
    assert after.data.max_length == before.data.max_length == 1024  # packed rows: not lowered
    assert any("optimizer steps" in w for w in fitted.warnings)  # even accumulation 1 leaves too few
    keys = [row["key"] for row in fitted.why]
    assert {"max_length", "grad_accum", "warmup_ratio", "lora_r", "lora_alpha", "weight_decay"} <= set(keys)
    assert not {"grad_accum", "lora_r"} & {row["key"] for row in plain.why}

    profile = fitted.record()["data_profile"]
    assert profile["sampled"] == 150 and profile["exact"] and 0 < profile["lengths"]["p50"] <= profile["lengths"]["p99"]
    # The memory estimate is made for the fitted config (rank 8), not the preset's.
    assert fitted.memory["trainable_params"] < plain.memory["trainable_params"]
