"""Progress consumers: a Rich progress bar on a terminal, plain log lines elsewhere.

Both are event subscribers; they never touch the loop. (The full live dashboard is its
own module, built on the same events.)
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from llmc_cli.engine.events import (
    CheckpointSaved,
    EvalEnded,
    Event,
    RunEnded,
    RunResumed,
    RunStarted,
    StepEnded,
    TrainingWarning,
)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def describe_start(event: RunStarted) -> str:
    return (
        f"Training {event.family} model {event.model} on {event.device} ({event.precision}): "
        f"{event.train_examples} train / {event.val_examples} val examples, {event.total_steps} steps, "
        f"{event.trainable_params:,} of {event.total_params:,} parameters trainable. Run: {event.run_dir}"
    )


def describe_eval(event: EvalEnded) -> str:
    return f"eval  step {event.step:>6}  loss {event.eval_loss:.4f}  ppl {event.perplexity:.2f}"


def describe_warning(event: TrainingWarning) -> str:
    return f"{event.message} Suggestion: {event.suggestion}" if event.suggestion else event.message


def describe_note(event: Event) -> str | None:
    """One line for checkpoint and resume events (None for other events)."""
    if isinstance(event, CheckpointSaved):
        removed = f", removed {', '.join(event.removed)}" if event.removed else ""
        return (
            f"checkpoint  step {event.step:>6}  {event.reason}  {event.size_bytes / 2**20:,.1f} MB "
            f"in {event.duration_s:.2f} s -> {event.path}{removed}"
        )
    if isinstance(event, RunResumed):
        return f"resumed from {event.checkpoint} at step {event.step}"
    return None


class PlainLog:
    """One line per logged step, eval and warning: for pipes, files and CI."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.console.print(describe_start(event), highlight=False, soft_wrap=True)
        elif isinstance(event, StepEnded):
            self.console.print(
                f"step {event.step:>6}/{event.total_steps}  epoch {event.epoch:.2f}  loss {event.loss:.4f}  "
                f"lr {event.lr:.2e}  grad {event.grad_norm:.3f}  {event.tokens_per_s:,.0f} tok/s  "
                f"eta {_duration(event.eta_s)}",
                highlight=False,
                soft_wrap=True,
            )
        elif isinstance(event, EvalEnded):
            self.console.print(describe_eval(event), highlight=False)
        elif isinstance(event, TrainingWarning):
            self.console.print(f"warning: {describe_warning(event)}", highlight=False, soft_wrap=True)
        elif (note := describe_note(event)) is not None:
            self.console.print(note, highlight=False, soft_wrap=True)


class RichProgress:
    """A progress bar with loss, learning rate, throughput and ETA, for terminals."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss [cyan]{task.fields[loss]}"),
            TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.console.print(describe_start(event), highlight=False)
            self.task = self.progress.add_task("train", total=event.total_steps, loss="-", lr="-", speed="-")
            self.progress.start()
        elif isinstance(event, StepEnded) and self.task is not None:
            self.progress.update(
                self.task,
                completed=event.step,
                loss=f"{event.loss:.4f}",
                lr=f"{event.lr:.2e}",
                speed=f"{event.tokens_per_s:,.0f}",
            )
        elif isinstance(event, EvalEnded):
            self.progress.console.print(describe_eval(event), highlight=False)
        elif isinstance(event, TrainingWarning):
            self.progress.console.print(f"[yellow]warning:[/] {describe_warning(event)}", highlight=False)
        elif (note := describe_note(event)) is not None:
            self.progress.console.print(note, highlight=False)
        elif isinstance(event, RunEnded):
            self.progress.stop()
