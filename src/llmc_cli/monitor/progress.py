"""Plain progress lines (one per logged step, eval, warning, checkpoint) and the shared wording.

Used where stdout is not a terminal or with ``--no-dashboard``; the live dashboard
(``dashboard.py``) reuses the same descriptions.
"""

from __future__ import annotations

from rich.console import Console

from llmc_cli.events import (
    Adjustment,
    CheckpointSaved,
    DataProgress,
    EvalEnded,
    Event,
    RolledBack,
    RunResumed,
    RunStarted,
    SamplesGenerated,
    StepEnded,
    TrainingWarning,
)


def duration(seconds: float) -> str:
    """A clock reading, h:mm:ss (elapsed time and ETA on the dashboard, the progress lines and the study view)."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def describe_start(event: RunStarted) -> str:
    return (
        f"Training {event.family} model {event.model} on {event.device} ({event.precision}): "
        f"{event.train_examples} train / {event.val_examples} val examples, {event.total_steps} steps, "
        f"{event.trainable_params:,} of {event.total_params:,} parameters trainable. Run: {event.run_dir}"
    )


def describe_data(event: DataProgress) -> str:
    """``Preparing data: 41% 73,000/178,667 records, 2,950/s, ETA 0:00:35``."""
    share = event.done / event.total if event.total else 1.0
    rate = event.done / event.elapsed_s if event.elapsed_s > 0 else 0.0
    eta = f", ETA {duration(event.eta_s)}" if event.eta_s is not None and event.done < event.total else ""
    verb = "Prepared data" if event.done >= event.total else "Preparing data"
    return (
        f"{verb} ({event.stage}): {share:.0%} {event.done:,}/{event.total:,} records, "
        f"{rate:,.0f}/s, {event.elapsed_s:.1f} s{eta}"
    )


def describe_eval(event: EvalEnded) -> str:
    return f"eval  step {event.step:>6}  loss {event.eval_loss:.4f}  ppl {event.perplexity:.2f}"


def describe_samples(event: SamplesGenerated, width: int = 100) -> str:
    """Scores and the first sample answer, on one line cut to about ``width`` characters of answer."""
    parts = []
    if event.exact_match is not None:
        right = round(event.exact_match * event.scored)
        parts.append(f"exact match {right}/{event.scored}  format {event.format_adherence:.0%}")
    if event.rouge_l is not None:
        parts.append(f"ROUGE-L {event.rouge_l:.2f}  chrF {event.chrf:.1f} ({event.text_scored} free-text)")
    scores = "  ".join(parts) or f"{len(event.samples)} answers (no references to score against)"
    first = " ".join(event.samples[0]["output"].split()) if event.samples else ""
    if len(first) > width:
        first = first[: width - 1] + "…"
    return f"samples step {event.step:>6}  {scores}  ({event.duration_s:.1f} s)  first: {first or '(empty)'}"


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
    if isinstance(event, Adjustment):
        return f"{event.cause}: {event.message}"
    if isinstance(event, RolledBack):
        return f"rolled back from step {event.from_step} to step {event.step} ({event.source})"
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
                f"eta {duration(event.eta_s)}",
                highlight=False,
                soft_wrap=True,
            )
        elif isinstance(event, EvalEnded):
            self.console.print(describe_eval(event), highlight=False)
        elif isinstance(event, SamplesGenerated):
            self.console.print(describe_samples(event), highlight=False, soft_wrap=True, markup=False)
        elif isinstance(event, DataProgress):
            self.console.print(describe_data(event), highlight=False, soft_wrap=True)
        elif isinstance(event, TrainingWarning):
            self.console.print(f"warning: {describe_warning(event)}", highlight=False, soft_wrap=True)
        elif (note := describe_note(event)) is not None:
            self.console.print(note, highlight=False, soft_wrap=True)
