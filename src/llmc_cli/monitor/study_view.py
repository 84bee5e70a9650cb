"""The live view of an ``llmc tune`` study: the study's progress above the trial in flight.

One Rich ``Live`` for the whole study. The study line: trial k of N, complete / pruned / failed
counts (every worker's, read from the study's storage as each trial ends), the best so far and an
ETA from the mean time of the trials finished. The trial panel: its parameters, step and ETA,
train-loss sparkline and its evaluations against the best trial's at the same step (what the
pruner compares). Each finished trial is printed as one line above the view. Piped output gets
the plain lines only (``llmc tune`` does not start the view without a terminal).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from llmc_cli.events import EvalEnded, Event, RunStarted, StepEnded
from llmc_cli.monitor.dashboard import REFRESH_PER_S, sparkline
from llmc_cli.monitor.progress import duration


@dataclass
class StudyCounts:
    """What a study's storage says about its trials."""

    finished: int = 0  # counted towards --trials
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    best_value: float | None = None
    best_number: int | None = None
    best_curve: dict[int, float] = field(default_factory=dict)  # the best trial's eval loss by step
    mean_duration_s: float | None = None


def study_counts(study, finished: int) -> StudyCounts:
    """Read the counts from ``study`` (``finished``: the trials that count towards ``--trials``)."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    durations = [t.duration.total_seconds() for t in trials if t.duration is not None and t.state.name != "RUNNING"]
    counts = StudyCounts(finished, len(complete), states.count("PRUNED"), states.count("FAIL"))
    if complete:
        best = min(complete, key=lambda t: t.value)
        counts.best_value, counts.best_number = float(best.value), best.number
        counts.best_curve = dict(best.intermediate_values)
    counts.mean_duration_s = sum(durations) / len(durations) if durations else None
    return counts


@dataclass
class _Trial:
    number: int
    params: dict[str, Any]
    started_at: float = field(default_factory=time.monotonic)
    total_steps: int | None = None
    step: StepEnded | None = None
    losses: deque = field(default_factory=lambda: deque(maxlen=120))
    evals: list[tuple[int, float]] = field(default_factory=list)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


class StudyView:
    """The study's live view on a terminal console."""

    def __init__(self, console: Console, name: str, trials: int, counts: StudyCounts) -> None:
        self.console, self.name, self.trials, self.counts = console, name, trials, counts
        self.trial: _Trial | None = None
        self._lock = threading.Lock()  # events arrive on the run's event thread, renders on Rich's
        self.live = Live(console=console, get_renderable=self.render, refresh_per_second=REFRESH_PER_S)

    def __enter__(self) -> StudyView:
        self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.live.stop()

    def trial_started(self, number: int, params: dict[str, Any]):
        """Show trial ``number``; returns the subscriber for its run's events."""
        trial = _Trial(number, dict(params))
        with self._lock:
            self.trial = trial

        def on_event(event: Event) -> None:
            with self._lock:
                if isinstance(event, RunStarted):
                    trial.total_steps = event.total_steps
                elif isinstance(event, StepEnded):
                    trial.step, trial.total_steps = event, event.total_steps
                    trial.losses.append(event.loss)
                elif isinstance(event, EvalEnded) and event.step > 0:
                    trial.evals.append((event.step, event.eval_loss))

        return on_event

    def trial_ended(self, line: str, counts: StudyCounts) -> None:
        """Print the finished trial's line above the view and update the study's counts. The trial's last
        state is drawn once first: a trial shorter than a frame (0.5 s) would otherwise never show its end."""
        self.live.refresh()
        with self._lock:
            self.counts, self.trial = counts, None
        self.console.print(line, highlight=False)

    # ----------------------------------------------------------------------- rendering
    def render(self) -> Group:
        with self._lock:
            return Group(self._study(), self._current())

    def _eta_s(self) -> float | None:
        c = self.counts
        if c.mean_duration_s is None:
            return None
        left = max(0, self.trials - c.finished) * c.mean_duration_s
        if self.trial is not None:
            left -= min(c.mean_duration_s, time.monotonic() - self.trial.started_at)
        return max(0.0, left)

    def _study(self) -> Panel:
        c = self.counts
        current = min(c.finished + (1 if self.trial is not None else 0), self.trials)
        best = f"{c.best_value:.4f} (trial {c.best_number})" if c.best_value is not None else "-"
        eta = self._eta_s()
        line = Text(
            f"trial {current}/{self.trials}   complete {c.complete}  pruned {c.pruned}  failed {c.failed}   "
            f"best so far {best}   ETA {duration(eta) if eta is not None else '-'}"
        )
        return Panel(Group(line, ProgressBar(total=self.trials, completed=c.finished)), title=f"study {self.name}")

    def _current(self) -> Panel:
        trial = self.trial
        if trial is None:
            return Panel(Text("between trials", style="dim"), title="trial")
        params = "  ".join(f"{key} {_fmt(value)}" for key, value in trial.params.items())
        step = trial.step
        total = trial.total_steps or 1
        progress = (
            f"step {step.step}/{total}  ETA {duration(step.eta_s)}  train loss {step.loss:.4f}"
            if step is not None
            else "preparing"
        )
        table = Table.grid(padding=(0, 1))
        table.add_row(Text(params))
        table.add_row(Text(progress))
        table.add_row(Text(sparkline(list(trial.losses)), style="cyan"))
        for at, loss in trial.evals[-3:]:
            best = self.counts.best_curve.get(at)
            against = f"  (best trial {best:.4f})" if best is not None and math.isfinite(best) else ""
            table.add_row(Text(f"eval @{at}: {loss:.4f}{against}"))
        bar = ProgressBar(total=total, completed=step.step if step is not None else 0)
        return Panel(Group(table, bar), title=f"trial {trial.number}")
