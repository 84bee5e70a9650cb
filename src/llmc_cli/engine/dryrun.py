"""``llmc train --dry-run``: everything a run would decide, without loading weights or training.

It resolves the config (every value with the layer that set it), scans the data, reads the
model's config and counts its parameters and the adapter's on the meta device, chooses the
precision for this hardware, and, when the data is already prepared, gives the exact rows
and steps. A checkpoint takes 16 bytes per adapter parameter (the adapter, AdamW's two
moments and the best adapter, all fp32) and about 80 KB of states and metadata; tests/e2e
checks the figure against a real checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from llmc_cli.data.cache import CorruptEntry, Entry
from llmc_cli.data.dataset import Rows
from llmc_cli.data.prepare import cache_key, open_rows
from llmc_cli.durable import free_bytes
from llmc_cli.engine.dataprep import open_tokenizer
from llmc_cli.engine.plan import RunPlan
from llmc_cli.engine.session import plan_steps
from llmc_cli.models.footprint import footprint
from llmc_cli.models.kind import check_causal, load_config
from llmc_cli.optimize.hardware import choose_precision, detect
from llmc_cli.optimize.layerprobe import layer_speed
from llmc_cli.optimize.memory import ModelFacts
from llmc_cli.optimize.throughput import STEP_EFFICIENCY, StepWork, predict
from llmc_cli.paths import data_cache_dir

CHECKPOINT_BYTES_PER_PARAM = 16  # adapter + AdamW exp_avg + exp_avg_sq + best adapter, fp32
CHECKPOINT_FIXED_BYTES = 80_000  # RNG states (60 KB), configs, README, manifest: measured on a tiny run
ADAPTER_BYTES_PER_PARAM = 4


def dry_run(plan: RunPlan) -> dict[str, Any]:
    """The plan as a JSON-ready dict: config, data, model, hardware, steps, disk, memory (the estimate's
    parts and ``total_bytes``, with the budget) and ``why`` (the rule behind each fitted value)."""
    cfg = plan.resolved.config
    hardware = detect()
    precision, precision_reason = choose_precision(cfg.model.precision, cfg.model.enable_mixed_precision, hardware)
    report: dict[str, Any] = {
        "config": {
            key: {"value": value, "source": plan.resolved.sources.get(key, "default")}
            for key, value in plan.resolved.config.flat().items()
        },
        "hardware": {"device": hardware.device_name, "precision": precision, "precision_reason": precision_reason},
    }
    report["model"] = _model(plan)
    rows = _prepared_rows(plan)
    report["data"] = _data(plan, rows)
    report["steps"] = _steps(plan, rows)
    trainable = report["model"].get("trainable_params")
    kept = cfg.run.max_checkpoints + cfg.run.keep_best_checkpoints
    output = cfg.run.output
    per_checkpoint = trainable * CHECKPOINT_BYTES_PER_PARAM + CHECKPOINT_FIXED_BYTES if trainable else None
    report["disk"] = {
        "output": str(output),
        "free_bytes": free_bytes(output),
        "checkpoints_kept": kept,
        "bytes_per_checkpoint": per_checkpoint,
        "bytes_needed": (
            per_checkpoint * kept + trainable * ADAPTER_BYTES_PER_PARAM + _tokenizer_bytes(plan) if trainable else None
        ),
    }
    report["memory"] = plan.memory or {"estimate": None, "reason": "not estimated"}
    report["time"] = _time(plan, rows, report["steps"].get("total_steps"), hardware.device, precision)
    report["why"] = plan.why
    report["warnings"] = plan.warnings
    return report


TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "vocab.*", "merges.txt", "chat_template.*")


def _tokenizer_bytes(plan: RunPlan) -> int:
    """Size of the tokenizer files the final adapter folder gets a copy of."""
    folder = Path(plan.source.location)
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for pattern in TOKENIZER_FILES for p in folder.glob(pattern) if p.is_file())


def _model(plan: RunPlan) -> dict[str, Any]:
    source = plan.source
    facts: dict[str, Any] = {"location": source.location, "family": source.family.name, "reason": source.reason}
    if not source.local:
        facts["note"] = "not downloaded yet: parameters are counted once it is"
        return facts
    config = load_config(source.location)
    check_causal(config, source.location)
    memory = plan.memory or {}
    if "trainable_params" in memory:  # counted already when the plan was fitted (engine/fit.py)
        total, trainable = memory["total_params"], memory["trainable_params"]
    else:
        counted = footprint(config, plan.resolved.config.lora)
        total, trainable = counted.total_params, counted.trainable_params
    facts.update(
        model_type=getattr(config, "model_type", None),
        layers=getattr(config, "num_hidden_layers", None),
        hidden_size=getattr(config, "hidden_size", None),
        vocab_size=getattr(config, "vocab_size", None),
        total_params=total,
        trainable_params=trainable,
    )
    return facts


def _prepared_rows(plan: RunPlan) -> Rows | None:
    """The run's rows if its data is already in the cache (nothing is tokenised here)."""
    if not plan.source.local:
        return None
    cfg = plan.resolved.config
    tokenizer, _ = open_tokenizer(plan)
    root = data_cache_dir(cfg.data.data_cache)
    key = cache_key(cfg.data, plan.data, tokenizer)
    try:
        entry = Entry.open(root, key)
    except CorruptEntry:
        return None
    if entry is None:
        return None
    return open_rows(entry, cfg.training.seed, cfg.data)


def _data(plan: RunPlan, rows: Rows | None) -> dict[str, Any]:
    scan = plan.data
    facts: dict[str, Any] = {
        "file": str(plan.resolved.config.data.data),
        "format": scan.format,
        "records": scan.records,
        "train_records": scan.train_records,
        "val_records": scan.val_records,
        "validation": scan.val_source,
        "prepared": rows is not None,
        "profile": plan.profile,  # token lengths of a sample, when the data rules read one (engine/fit.py)
    }
    if rows is not None:
        facts.update(
            cache=rows.cache_path,
            train_rows=len(rows.train),
            val_rows=len(rows.val),
            train_tokens=rows.train_report.tokens,
            truncated=rows.train_report.truncated,
            token_lengths=rows.train_report.lengths,
            notes=rows.train_report.warnings(plan.resolved.config.data.max_length),
            dropped=rows.train_report.dropped_too_long + rows.train_report.dropped_no_target,
        )
    return facts


def _time(plan: RunPlan, rows: Rows | None, total_steps: int | None, device: str, precision: str) -> dict[str, Any]:
    """Predicted seconds per optimizer step, from the step's FLOPs and a layer probe on this machine."""
    memory = plan.memory or {}
    if "model_facts" not in memory:
        return {"per_step_s": None, "reason": memory.get("reason", "the model's config was not read")}
    efficiency = STEP_EFFICIENCY.get((device, precision))
    if efficiency is None:
        return {"per_step_s": None, "reason": f"step times are not calibrated for {precision} on {device} yet"}
    cfg = plan.resolved.config
    facts = ModelFacts(**memory["model_facts"])
    step_rows = cfg.training.batch_size * cfg.training.grad_accum
    checkpointing = bool(memory.get("gradient_checkpointing"))
    if rows is not None and len(rows.train) and rows.train_report.kept:
        report = rows.train_report
        per_row = report.tokens / len(rows.train)
        work = StepWork(
            step_rows,
            step_rows * per_row,
            step_rows * report.target_tokens / len(rows.train),
            report.tokens / report.kept / 2,
            checkpointing,
        )
        basis = f"the prepared data: {per_row:,.0f} tokens a row on average"
    elif (profile := plan.profile or {}).get("estimated", {}).get("rows"):
        examples_per_row = plan.data.train_records / profile["estimated"]["rows"]
        length = min(profile["mean_tokens"], cfg.data.max_length)
        per_row = min(examples_per_row * length, cfg.data.max_length)
        targets = per_row * profile["mean_targets"] / max(profile["mean_tokens"], 1)
        work = StepWork(step_rows, step_rows * per_row, step_rows * targets, length / 2, checkpointing)
        basis = f"a sample of the data: about {per_row:,.0f} tokens a row"
    else:
        length = cfg.data.max_length
        work = StepWork(step_rows, step_rows * length, step_rows * length, length / 2, checkpointing)
        basis = f"an upper bound: rows of {length} tokens, all of them targets (the data is not prepared yet)"
    if cfg.model.quantize != "none":
        basis += "; 4-/8-bit weights are dequantised every step, which this does not count"
    speed = layer_speed(facts.hidden_size, precision, device, cfg.lora.lora_r)
    return predict(facts, work, speed, efficiency, total_steps, basis).to_dict()


def _steps(plan: RunPlan, rows: Rows | None) -> dict[str, Any]:
    training = plan.resolved.config.training
    if rows is None:
        if training.max_steps:
            return {"total_steps": training.max_steps, "exact": True}
        estimated = (plan.profile or {}).get("estimated", {}).get("steps")
        if estimated:
            return {
                "total_steps": estimated,
                "exact": False,
                "reason": "estimated from a sample of the data's token lengths; exact once it is prepared "
                "(llmc prepare)",
            }
        return {"total_steps": None, "exact": False, "reason": "the data is not prepared yet: run llmc prepare"}
    batches = math.ceil(len(rows.train) / training.batch_size)
    per_epoch, total, eval_every = plan_steps(training, batches, rows)
    return {"steps_per_epoch": per_epoch, "total_steps": total, "eval_every": eval_every, "exact": True}
