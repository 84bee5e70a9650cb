"""What the wizard shows between questions: the machine, the data, the models and the presets."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from llmc_cli.setup.assess import Option, duration, gib
from llmc_cli.setup.datacheck import DataProfile

SHORT_TRADE_OFF = {"highspeed": "fastest", "quality": "balanced", "bestaccuracy": "most thorough"}
TRADE_OFF = {
    "highspeed": "fastest: small q/v adapter, short sequences",
    "quality": "balanced: all-linear adapter, a few epochs",
    "bestaccuracy": "most thorough: rank-32 all-linear, most epochs, long sequences",
}


def machine_line(machine, advice) -> str:
    """One line: CPU, RAM, GPUs and the precision and QLoRA answers of ``llmc doctor``."""
    by_topic = {a.topic: a for a in advice}
    gpus = ", ".join(f"{g.name} ({g.memory_total_bytes / 2**30:.0f} GiB)" for g in machine.gpus) or "none"
    precision = by_topic.get("precision")
    qlora = by_topic.get("QLoRA (--quantize 4bit)")
    return (
        f"[bold]Machine:[/] {escape(machine.cpu_model)}, {machine.cpu_cores} cores, "
        f"{machine.ram_available_bytes / 2**30:.1f} GiB RAM available; GPU: {escape(gpus)}. "
        f"Training precision: {precision.answer if precision else '?'}"
        + (f" ({escape(precision.why)})" if precision else "")
        + (f"; QLoRA {qlora.answer}." if qlora else ".")
    )


def data_table(profile: DataProfile, bucket: str | None) -> Table:
    table = Table(title=f"Data: {escape(str(profile.path))}", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("format", profile.format or "not recognised")
    table.add_row("examples", f"{profile.records:,}" + (f" ({bucket} dataset for the presets)" if bucket else ""))
    table.add_row("size", f"{profile.size_bytes / 2**20:.2f} MB")
    if profile.preview:
        table.add_row("first example", escape(profile.preview))
    if profile.n_problems:
        shown = "\n".join(escape(p) for p in profile.problems)
        more = profile.n_problems - len(profile.problems)
        table.add_row(
            "[red]problems[/]", f"[red]{profile.n_problems}[/]:\n{shown}" + (f"\n... and {more} more" if more else "")
        )
    else:
        table.add_row("problems", "none found")
    return table


def models_table(rows: list[tuple[str, str, bool | None, int | None, str]]) -> Table:
    """(label, where, fits, estimated peak bytes, time an epoch) per model."""
    table = Table(title="Models: fit and time with the quality preset on this data")
    for column in ("model", "where", "fits", "est. peak", "time an epoch"):
        table.add_column(column, overflow="fold")
    for label, where, fits, peak, time in rows:
        shown = "?" if fits is None else "[green]yes[/]" if fits else "[red]no[/]"
        table.add_row(escape(label), where, shown, gib(peak) if peak is not None else "-", escape(time))
    return table


def presets_table(options: list[Option], recommended: str) -> Table:
    budget = next((o.budget_bytes for o in options if o.budget_bytes), None)
    table = Table(title=f"Presets for this data and machine (memory budget {gib(budget)})")
    table.add_column("preset", no_wrap=True)
    for column in ("fits", "est. peak", "micro", "steps", "est. time", "LoRA r", "max len"):
        table.add_column(column, overflow="fold")
    for option in options:
        name = option.preset + (" *" if option.preset == recommended else "")
        if option.peak_bytes is None:
            table.add_row(name, "?", escape(option.error))
            continue
        steps = f"{option.steps}" + ("" if option.steps_exact else "~") if option.steps else "?"
        table.add_row(
            name,
            "[green]yes[/]" if option.fits else "[red]no[/]",
            gib(option.peak_bytes),
            f"{option.micro_batch}" + (" + ckpt" if option.checkpointing else ""),
            steps,
            duration(option.seconds),
            str(option.lora_r),
            str(option.max_length),
        )
    goals = "; ".join(f"{name}: {goal}" for name, goal in SHORT_TRADE_OFF.items())
    table.caption = f"{goals}\n* recommended; ~ estimated from a sample of the data until it is prepared"
    return table
