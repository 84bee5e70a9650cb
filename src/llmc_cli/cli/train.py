"""``llmc train``: build the config from flags, run the engine, render the outcome."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel

from llmc_cli.cli.options import ConfigOpt, DashboardOpt, DataOpt, ModelOpt, PresetOpt
from llmc_cli.config.schema import FIELD_SECTION, DataFormat, Overlong, Precision, Quantize, describe

PANELS = {
    "model": "Model and memory",
    "data": "Data",
    "lora": "LoRA adapter",
    "training": "Training schedule",
    "run": "Run, checkpoints and tracking",
}


def _opt(key: str, *names: str, **kwargs):
    """A flag for config key ``key``: the parameter must be named ``key`` too (see ``config_flags``).
    ``--help`` groups the flags by config section, so each panel's columns fit 80 characters."""
    kwargs.setdefault("rich_help_panel", PANELS[FIELD_SECTION[key]])
    return typer.Option(*names, help=describe(key), show_default=False, **kwargs)


def config_flags(arguments: dict) -> dict:
    """The config keys among a command's arguments (its parameters are named after the keys)."""
    return {key: value for key, value in arguments.items() if key in FIELD_SECTION}


def train(
    data: DataOpt = None,
    model: ModelOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    from_study: Annotated[
        str | None,
        typer.Option("--from-study", help="Train with the best trial of an llmc tune study (its name or folder)."),
    ] = None,
    storage: Annotated[
        str | None, typer.Option("--storage", help="With --from-study: the study's Optuna RDB URL.")
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Train a locally built demo model on bundled data (no download).")
    ] = False,
    epochs: Annotated[float | None, _opt("epochs", "--epochs")] = None,
    max_steps: Annotated[int | None, _opt("max_steps", "--max-steps")] = None,
    lr: Annotated[float | None, _opt("lr", "--lr")] = None,
    batch_size: Annotated[int | None, _opt("batch_size", "--batch-size")] = None,
    grad_accum: Annotated[int | None, _opt("grad_accum", "--grad-accum")] = None,
    micro_batch: Annotated[int | None, _opt("micro_batch", "--micro-batch")] = None,
    memory_budget: Annotated[float | None, _opt("memory_budget", "--memory-budget")] = None,
    max_length: Annotated[int | None, _opt("max_length", "--max-length")] = None,
    lora_r: Annotated[int | None, _opt("lora_r", "--lora-r")] = None,
    lora_alpha: Annotated[float | None, _opt("lora_alpha", "--lora-alpha")] = None,
    lora_dropout: Annotated[float | None, _opt("lora_dropout", "--lora-dropout")] = None,
    target_modules: Annotated[str | None, _opt("target_modules", "--target-modules")] = None,
    quantize: Annotated[Quantize | None, _opt("quantize", "--quantize", metavar="<choice>")] = None,
    precision: Annotated[Precision | None, _opt("precision", "--precision", metavar="<choice>")] = None,
    format: Annotated[DataFormat | None, _opt("format", "--format", metavar="<choice>")] = None,  # noqa: A002 - the config key
    overlong: Annotated[Overlong | None, _opt("overlong", "--overlong", metavar="<choice>")] = None,
    limit: Annotated[int | None, _opt("limit", "--limit")] = None,
    val_data: Annotated[Path | None, _opt("val_data", "--val-data")] = None,
    eval_every: Annotated[int | None, _opt("eval_every", "--eval-every")] = None,
    samples: Annotated[int | None, _opt("samples", "--samples")] = None,
    sample_every: Annotated[int | None, _opt("sample_every", "--sample-every")] = None,
    sample_tokens: Annotated[int | None, _opt("sample_tokens", "--sample-tokens")] = None,
    seed: Annotated[int | None, _opt("seed", "--seed")] = None,
    output: Annotated[Path | None, _opt("output", "--output", "-o")] = None,
    run_name: Annotated[str | None, _opt("run_name", "--run-name")] = None,
    train_on_prompt: Annotated[bool | None, _opt("train_on_prompt", "--train-on-prompt/--no-train-on-prompt")] = None,
    packing: Annotated[bool | None, _opt("packing", "--packing/--no-packing")] = None,
    data_cache: Annotated[Path | None, _opt("data_cache", "--data-cache")] = None,
    data_workers: Annotated[int | None, _opt("data_workers", "--data-workers")] = None,
    merge: Annotated[bool | None, _opt("merge", "--merge/--no-merge")] = None,
    checkpoint_interval: Annotated[int | None, _opt("checkpoint_interval", "--checkpoint-interval")] = None,
    checkpoint_minutes: Annotated[float | None, _opt("checkpoint_minutes", "--checkpoint-minutes")] = None,
    max_checkpoints: Annotated[int | None, _opt("max_checkpoints", "--max-checkpoints")] = None,
    keep_best_checkpoints: Annotated[int | None, _opt("keep_best_checkpoints", "--keep-best")] = None,
    report_to: Annotated[str | None, _opt("report_to", "--report-to")] = None,
    dashboard: DashboardOpt = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan (config and its sources, data, model, steps) and exit.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --dry-run: print the plan as JSON.")] = False,
) -> None:
    """Fine-tune a model with LoRA on a data file.

    Examples:

      llmc train --demo

      llmc train --data train.jsonl --model ./TinyLlama-1.1B-Chat --preset highspeed

      llmc train --data chat.jsonl --model qwen --preset bestaccuracy --quantize 4bit --merge

      llmc train --from-study tune-3   (the best trial of llmc tune's study, as a full run)
    """
    flags = config_flags(locals())  # before any other local exists
    console = Console()
    with console.status("Loading the training engine..."):
        quiet_libraries()
        from llmc_cli import FineTuner

    if as_json and not dry_run:
        raise typer.BadParameter("--json goes with --dry-run.", param_hint="--json")
    if from_study is not None:
        if demo:
            raise typer.BadParameter("--demo and --from-study exclude each other.", param_hint="--from-study")
        tuner = FineTuner.from_study(from_study, storage=storage, config_file=config, **flags)
    else:
        if storage is not None:
            raise typer.BadParameter("--storage goes with --from-study.", param_hint="--storage")
        tuner = FineTuner(config_file=config, demo=demo, **flags)
    with console.status("Checking configuration, data and model..."):
        tuner.plan()
    if dry_run:
        with console.status("Counting parameters and looking for prepared data..."):
            plan = tuner.dry_run()
        show_plan(console, plan, as_json)
        return
    execute(tuner, console, dashboard)


def show_plan(console: Console, plan: dict, as_json: bool) -> None:
    """Print a dry run's plan as JSON or as tables."""
    import json

    from rich.table import Table

    from llmc_cli.durable import human_bytes

    if as_json:
        print(json.dumps(plan, indent=2, default=str))
        return
    config = Table(title="Configuration (each value and the layer that set it)")
    for column in ("key", "value", "source"):
        config.add_column(column, overflow="fold")
    for key, item in plan["config"].items():
        value = item["value"]
        config.add_row(key, ",".join(value) if isinstance(value, list) else str(value), item["source"])
    console.print(config)
    model, data, steps, disk = plan["model"], plan["data"], plan["steps"], plan["disk"]
    facts = Table(title="Plan", show_header=False)
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    facts.add_row("model", f"{model['location']} ({model['family']}: {model['reason']})")
    if "total_params" in model:
        facts.add_row(
            "parameters",
            f"{model['total_params']:,} in the base, {model['trainable_params']:,} trainable in the adapter "
            f"({model['trainable_params'] / model['total_params']:.2%})",
        )
    facts.add_row("precision", f"{plan['hardware']['precision']} on {plan['hardware']['device']}: "
                  f"{plan['hardware']['precision_reason']}")  # fmt: skip
    facts.add_row("data", f"{data['file']}: {data['records']:,} {data['format']} records, {data['train_records']:,} "
                  f"train / {data['val_records']:,} validation ({data['validation']})")  # fmt: skip
    if data["prepared"]:
        facts.add_row("prepared", f"{data['train_rows']:,} train rows ({data['train_tokens']:,} tokens), "
                      f"{data['val_rows']:,} validation rows, in {data['cache']}")  # fmt: skip
        if data["token_lengths"]:
            lengths = data["token_lengths"]
            facts.add_row("lengths", f"median {lengths['p50']:,}, p95 {lengths['p95']:,}, p99 {lengths['p99']:,}, "
                          f"longest {lengths['max']:,} tokens (before truncation)")  # fmt: skip
        for note in data["notes"]:
            facts.add_row("note", note)
    else:
        facts.add_row("prepared", "not yet: the first run tokenises the data (or run llmc prepare first)")
        if data.get("profile") and data["profile"]["lengths"]:
            profile, lengths = data["profile"], data["profile"]["lengths"]
            sample = f"all {profile['sampled']:,} examples" if profile["exact"] else f"{profile['sampled']:,} sampled"
            facts.add_row("lengths", f"median {lengths['p50']:,}, p95 {lengths['p95']:,}, p99 {lengths['p99']:,}, "
                          f"longest {lengths['max']:,} tokens (templated, {sample})")  # fmt: skip
    if steps.get("steps_per_epoch"):
        facts.add_row("steps", f"{steps['total_steps']:,} ({steps['steps_per_epoch']:,} per epoch), "
                      f"evaluation every {steps['eval_every']:,}")  # fmt: skip
    elif steps["total_steps"] and not steps["exact"]:
        facts.add_row("steps", f"about {steps['total_steps']:,}: {steps['reason']}")
    else:
        facts.add_row("steps", str(steps["total_steps"]) if steps["total_steps"] else steps["reason"])
    if disk["bytes_needed"] is not None:
        free = human_bytes(disk["free_bytes"]) if disk["free_bytes"] is not None else "unknown"
        facts.add_row(
            "disk",
            f"{human_bytes(disk['bytes_needed'])} for up to {disk['checkpoints_kept']} checkpoints of "
            f"{human_bytes(disk['bytes_per_checkpoint'])} and the final adapter; {free} free at {disk['output']}",
        )
    memory = plan["memory"]
    if memory.get("total_bytes") is None:
        facts.add_row("memory", f"not estimated: {memory['reason']}")
    else:
        parts = ", ".join(f"{name} {human_bytes(size)}" for name, size in memory["parts"].items())
        facts.add_row(
            "memory",
            f"{human_bytes(memory['total_bytes'])} estimated peak at micro-batch {memory['micro_batch']} x "
            f"{memory['seq_len']} tokens, gradient checkpointing {'on' if memory['gradient_checkpointing'] else 'off'} "
            f"({parts}); budget {human_bytes(memory['budget_bytes'])} ({memory['budget_rule']})",
        )
        if memory["approximate"]:
            facts.add_row("approximate", memory["reason"])
        for note in memory["notes"]:
            facts.add_row("measured as", note)
    timing = plan.get("time") or {}
    if timing.get("per_step_s") is None:
        facts.add_row("time", f"not predicted: {timing.get('reason', 'unknown')}")
    else:
        total = f" ({_duration(timing['total_s'])} for the run)" if timing["total_s"] else ""
        facts.add_row(
            "time",
            f"about {timing['per_step_s']:.3g} s a step{total}: {timing['step_flops'] / 1e12:.3g} TFLOP a step at "
            f"{timing['efficiency']:.0%} of the {timing['probe_flops_per_s'] / 1e9:,.0f} GFLOP/s this machine "
            f"trained a decoder layer at just now; token counts from {timing['basis']}",
        )
    for warning in plan["warnings"]:
        facts.add_row("warning", warning)
    console.print(facts)
    if plan["why"]:
        why = Table(title="Why (the rule behind each chosen value, and the alternative)")
        for column in ("key", "value", "rule", "alternative"):
            why.add_column(column, overflow="fold")
        for row in plan["why"]:
            why.add_row(row["key"], str(row["value"]), row["rule"], row["alternative"])
        console.print(why)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def execute(tuner, console: Console, dashboard: bool = True) -> None:
    """Run a planned FineTuner with the dashboard (or plain log lines), then print the summary panel."""
    from llmc_cli.monitor.dashboard import Dashboard
    from llmc_cli.monitor.progress import PlainLog

    tuner.subscribe(Dashboard(console) if console.is_terminal and dashboard else PlainLog(console))
    run_dir = tuner.train()
    _render_summary(console, run_dir)


def quiet_libraries() -> None:
    """Silence library progress bars and deprecation chatter; llmc reports what matters."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _checkpoints_line(run_dir: Path) -> str:
    from llmc_cli.checkpoints import catalog

    found = [e for e in catalog.entries(run_dir) if e.complete]
    if not found:
        return "none"
    best = catalog.best(found)
    best_text = f", best {best.path.name} (eval {best.metrics['eval_loss']:.4f})" if best else ""
    return f"{len(found)} kept in {run_dir / catalog.CHECKPOINTS}{best_text}"


def _render_summary(console: Console, run_dir: Path) -> None:
    import json
    from collections import Counter

    summary = json.loads((run_dir / "summary.json").read_text())

    def loss(key: str) -> str:
        return f"{summary[key]:.4f}" if summary.get(key) is not None else "n/a"

    lines = [
        f"Run:        {run_dir}",
        f"Adapter:    {summary['adapter_dir']}  (PeftModel.from_pretrained loads it)",
        f"Eval loss:  {loss('initial_eval_loss')} at step 0 -> {loss('final_eval_loss')} "
        f"after {summary['steps']} steps",
        f"Best eval:  {loss('best_eval_loss')}",
        f"Train loss: {loss('final_train_loss')} (last logged)",
        f"Time:       {summary['train_time_s']:.1f} s training ({summary['tokens_per_s']:,.0f} tokens/s), "
        f"{summary['eval_time_s']:.1f} s evaluating, peak RSS {summary['peak_rss_mb']:,.0f} MB",
        f"Precision:  {summary['precision']} ({summary['precision_reason']})",
    ]
    if summary.get("restored_best_step") is not None:
        best = summary["restored_best_step"]
        lines.insert(2, f"            the best adapter, from step {best}: the last one was worse")
    actions = Counter(a.get("action") for a in summary.get("adjustments") or [])
    if actions:
        said = ", ".join(f"{count} {action.replace('-', ' ')}" for action, count in actions.items())
        lines.append(f"Adjusted:   {said} (LR x{summary.get('lr_multiplier', 1.0):g} of the plan at the end)")
    lines.append(f"Checkpoints: {_checkpoints_line(run_dir)}")
    if summary.get("merged_dir"):
        lines.append(f"Merged:     {summary['merged_dir']}")
    console.print(Panel("\n".join(lines), title="llmc: training complete", expand=False), highlight=False)
