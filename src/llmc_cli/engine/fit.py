"""Fit a new run's plan to its data and this machine. With ``OPTIMIZE_FOR_DATA``, the data rules
(optimize/rules.py: max length, steps, warm-up, LoRA capacity) over a tokenised sample of the data;
then the memory estimate, and with ``OPTIMIZE_MEMORY`` the micro-batch and gradient checkpointing
(effective batch kept). Reads the model's config and tokenizer only, never its weights.

The chosen values become configuration layers on top, ``optimize_for_data`` and then
``optimize_memory``, so ``config.json`` names them as their sources; the rules behind them (and
the alternatives) go into the plan's ``why`` rows and ``config.json``. A resumed run keeps its
own ``config.json`` and is never refitted.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from llmc_cli.config.layers import ResolvedConfig
from llmc_cli.engine.plan import RunPlan
from llmc_cli.errors import ConfigError
from llmc_cli.models.loading import BILLION
from llmc_cli.optimize.batch import Choice, fit_batch
from llmc_cli.optimize.budget import GiB, memory_budget
from llmc_cli.optimize.hardware import Hardware, choose_precision, detect
from llmc_cli.optimize.memory import MemoryModel, model_facts
from llmc_cli.optimize.rules import fit_to_data

LAYER = "optimize_memory"
DATA_LAYER = "optimize_for_data"


def fit_to_machine(plan: RunPlan, hardware: Hardware | None = None) -> RunPlan:
    """The plan with its memory estimate and, when ``optimize_memory`` is on, a fitted micro-batch."""
    from llmc_cli.models.kind import check_causal, load_config
    from llmc_cli.models.optional import skip_unused_bitsandbytes

    cfg = plan.resolved.config
    skip_unused_bitsandbytes(cfg.model.quantize)  # before the estimate imports peft
    hardware = hardware or detect()
    if cfg.model.quantize != "none" and hardware.device != "cuda":
        raise ConfigError(
            f"--quantize {cfg.model.quantize} (QLoRA) needs a CUDA GPU; this machine trains on {hardware.device}.",
            hint="Use --quantize none: LoRA on the full-precision weights. (bitsandbytes' CPU kernels stopped "
            "a 4-bit run with 'N must be divisible by block_n' on llmc's demo model.)",
        )
    if not plan.source.local:
        return replace(plan, memory={"estimate": None, "reason": "the model is not downloaded yet"})
    model_config = load_config(plan.source.location)
    check_causal(model_config, plan.source.location)
    precision, precision_why = choose_precision(cfg.model.precision, cfg.model.enable_mixed_precision, hardware)
    resolved, warnings, profile, data_why = plan.resolved, list(plan.warnings), None, []
    if cfg.model.optimize_for_data:
        resolved, data_why, more, profile = _fit_to_data(plan, model_config)
        warnings += more
        cfg = resolved.config
    facts = model_facts(model_config, cfg.lora)
    memory = MemoryModel(
        model_config,
        facts,
        cfg.lora,
        device="cuda" if hardware.device == "cuda" else "cpu",
        precision=precision,
        quantize=cfg.model.quantize,
        seq_len=cfg.data.max_length,
    )
    budget, budget_rule = memory_budget(cfg.model.memory_budget, hardware, precision=precision)
    why = [Choice("precision", precision, precision_why), *data_why]
    t, setting = cfg.training, cfg.model.enable_gradient_checkpointing
    if cfg.model.optimize_memory:
        effective = t.batch_size * t.grad_accum
        configured = min(t.micro_batch or t.batch_size, t.batch_size)
        user_set = _set_by_user(resolved, "batch_size") or _set_by_user(resolved, "micro_batch")
        # A micro-batch the user set is a ceiling; so is the configured one on CPU (see optimize/batch.py).
        ceiling = configured if user_set or hardware.device != "cuda" else effective
        fit = fit_batch(memory, budget, budget_rule, effective=effective, ceiling=ceiling, checkpointing=setting)
        values, row = _micro_batch_values(fit.micro_batch, t.batch_size, effective)
        if setting == "auto":
            values["enable_gradient_checkpointing"] = fit.gradient_checkpointing
        resolved = _with_layer(resolved, values)
        why += fit.choices + ([row] if row else [])
        estimate = fit.estimate
        if fit.warning:
            warnings.append(fit.warning)
    else:
        checkpointing = facts.total_params >= BILLION if setting == "auto" else bool(setting)
        micro = min(t.micro_batch or t.batch_size, t.batch_size)
        estimate = memory.estimate(micro, checkpointing, t.batch_size * t.grad_accum)
        why.append(Choice("micro_batch", micro, "OPTIMIZE_MEMORY is off: as configured"))
        if estimate.total_bytes > budget:
            warnings.append(
                f"The estimated peak, {estimate.total_bytes / GiB:.1f} GiB, is over the budget of "
                f"{budget / GiB:.1f} GiB ({budget_rule}); out-of-memory recovery will shrink the micro-batch."
            )
    report = {
        **estimate.to_dict(),
        "budget_bytes": budget,
        "budget_rule": budget_rule,
        "total_params": facts.total_params,
        "trainable_params": facts.trainable_params,
        "model_facts": asdict(facts),  # what the dry run's step time needs (optimize/throughput.py)
    }
    return replace(
        plan, resolved=resolved, why=[c.to_dict() for c in why], memory=report, warnings=warnings, profile=profile
    )


def _fit_to_data(plan: RunPlan, model_config) -> tuple[ResolvedConfig, list[Choice], list[str], dict[str, Any]]:
    """The data rules (optimize/rules.py) applied over the preset, from a tokenised sample of the data."""
    from llmc_cli.data.profile import profile_lengths
    from llmc_cli.engine.dataprep import open_tokenizer
    from llmc_cli.models.footprint import footprint

    cfg = plan.resolved.config
    tokenizer, _ = open_tokenizer(plan)
    assert cfg.data.data is not None, "plan_run checks that --data is set"
    profile = profile_lengths(
        cfg.data.data, plan.data.format, plan.data.records, tokenizer, cfg.data.train_on_prompt, cfg.data.limit
    )
    fit = fit_to_data(
        cfg,
        lambda key: not _set_by_user(plan.resolved, key),
        profile,
        plan.data.train_records,
        footprint(model_config, cfg.lora).total_params,
        getattr(model_config, "max_position_embeddings", None),
    )
    resolved = _with_layer(plan.resolved, fit.values, DATA_LAYER)
    return resolved, fit.choices, fit.warnings, {**profile.to_dict(), "estimated": fit.estimates}


def _micro_batch_values(micro: int, batch_size: int, effective: int) -> tuple[dict[str, Any], Choice | None]:
    """Config values for a fitted micro-batch: up to the loader's batch only ``micro_batch`` changes
    (each batch is cut into pieces); above it, the whole effective batch is loaded at once."""
    if micro <= batch_size:
        return {"micro_batch": micro if micro < batch_size else None}, None
    row = Choice(
        "batch_size",
        effective,
        f"effective batch {effective} kept: loaded at once, {-(-effective // micro)} micro-batch(es) a step "
        "(the same rows in the same order)",
    )
    return {"batch_size": effective, "grad_accum": 1, "micro_batch": micro}, row


def _set_by_user(resolved: ResolvedConfig, key: str) -> bool:
    source = resolved.sources.get(key, "default")
    return source != "default" and not source.startswith("preset:")


def _with_layer(resolved: ResolvedConfig, values: dict[str, Any], layer: str = LAYER) -> ResolvedConfig:
    """``resolved`` with ``values`` on top, sourced to ``layer`` where they change something."""
    current = resolved.config.flat()
    changed = {k: v for k, v in values.items() if current.get(k) != v}
    if not changed:
        return resolved
    sources = {**resolved.sources, **{k: layer for k in changed}}
    return ResolvedConfig(resolved.config.with_updates(**changed), sources)
