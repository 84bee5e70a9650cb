"""The live training dashboard: a Rich ``Live`` view fed by engine events.

Event handling only updates a small state object; Rich's refresh thread renders it twice
a second, so the training loop never waits for the terminal. Panels: progress and
ETA; train and eval loss (current, best, a sparkline of the recent curve); learning rate,
gradient norm, update ratio and throughput; CPU, memory and GPUs (n/a without one); the last
checkpoint; the latest warnings. At the end the view stops and the caller prints the summary.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from llmc_cli.events import (
    Adjustment,
    CheckpointSaved,
    DataProgress,
    EvalEnded,
    Event,
    RunEnded,
    RunResumed,
    RunStarted,
    SamplesGenerated,
    StepEnded,
    SystemSampled,
    TrainingWarning,
)
from llmc_cli.monitor.progress import (
    describe_data,
    describe_note,
    describe_samples,
    describe_start,
    describe_warning,
    duration,
)

SPARK = "▁▂▃▄▅▆▇█"
REFRESH_PER_S = 2  # a frame costs ~6 ms of CPU; twice a second is plenty for training curves


def sparkline(values: list[float], width: int = 40) -> str:
    """The last ``width`` values as a row of block characters (empty for fewer than two)."""
    values = [v for v in values[-width:] if math.isfinite(v)]
    if len(values) < 2:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - low) / span * len(SPARK)))] for v in values)


@dataclass
class _State:
    started: RunStarted | None = None
    step: StepEnded | None = None
    losses: deque = field(default_factory=lambda: deque(maxlen=120))
    best_loss: float | None = None
    eval_loss: float | None = None
    eval_step: int | None = None
    best_eval: float | None = None
    system: SystemSampled | None = None
    checkpoint: CheckpointSaved | None = None
    warnings: deque = field(default_factory=lambda: deque(maxlen=4))
    resumed_from: int | None = None
    sample: SamplesGenerated | None = None


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


class Dashboard:
    """An event subscriber that shows a live view on a terminal console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.state = _State()
        self.live = Live(console=console, get_renderable=self.render, refresh_per_second=REFRESH_PER_S, transient=False)
        self._running = False

    def __call__(self, event: Event) -> None:
        s = self.state
        if isinstance(event, RunStarted):
            s.started = event
            self.live.start()
            self._running = True
        elif isinstance(event, StepEnded):
            s.step = event
            s.losses.append(event.loss)
            if math.isfinite(event.loss):
                s.best_loss = event.loss if s.best_loss is None else min(s.best_loss, event.loss)
        elif isinstance(event, EvalEnded):
            s.eval_loss, s.eval_step = event.eval_loss, event.step
            s.best_eval = event.eval_loss if s.best_eval is None else min(s.best_eval, event.eval_loss)
        elif isinstance(event, SystemSampled):
            s.system = event
        elif isinstance(event, CheckpointSaved):
            s.checkpoint = event
        elif isinstance(event, SamplesGenerated):
            s.sample = event
        elif isinstance(event, TrainingWarning | Adjustment):
            s.warnings.append(event)
        elif isinstance(event, RunResumed):
            s.resumed_from = event.step
        elif isinstance(event, DataProgress) and not self._running:
            self.console.print(describe_data(event), highlight=False, soft_wrap=True)
        elif isinstance(event, RunEnded) and self._running:
            self.live.stop()
            self._running = False

    # ----------------------------------------------------------------------- rendering
    def render(self) -> Group:
        s = self.state
        parts = []
        if s.started is not None:
            parts.append(Text(describe_start(s.started), style="dim"))
        parts.append(self._progress())
        row = Table.grid(expand=True, padding=(0, 2))
        row.add_column(ratio=1)
        row.add_column(ratio=1)
        row.add_column(ratio=1)
        row.add_row(self._losses(), self._optimisation(), self._system())
        parts.append(row)
        parts.append(self._footer())
        return Group(*parts)

    def _progress(self) -> Panel:
        s = self.state
        total = s.started.total_steps if s.started else 1
        step = s.step.step if s.step else (s.resumed_from or 0)
        epoch = f"{s.step.epoch:.2f}" if s.step else "-"
        elapsed = duration(s.step.elapsed_s) if s.step else "-"
        eta = duration(s.step.eta_s) if s.step else "-"
        resumed = f"  (resumed at {s.resumed_from})" if s.resumed_from is not None else ""
        line = Text(f"step {step}/{total}  epoch {epoch}  elapsed {elapsed}  ETA {eta}{resumed}")
        return Panel(Group(line, ProgressBar(total=total, completed=step)), title="progress")

    def _losses(self) -> Panel:
        s = self.state
        table = Table.grid(padding=(0, 1))
        table.add_row("train loss", _fmt(s.step.loss if s.step else None), "best", _fmt(s.best_loss))
        eval_at = f" @{s.eval_step}" if s.eval_step is not None else ""
        table.add_row("eval loss", _fmt(s.eval_loss) + eval_at, "best", _fmt(s.best_eval))
        return Panel(Group(table, Text(sparkline(list(s.losses)), style="cyan")), title="loss")

    def _optimisation(self) -> Panel:
        step = self.state.step
        table = Table.grid(padding=(0, 1))
        table.add_row("learning rate", _fmt(step.lr if step else None, ".2e"))
        table.add_row("grad norm", _fmt(step.grad_norm if step else None, ".3f"))
        table.add_row("update ratio", _fmt(step.update_ratio if step else None, ".2e"))
        table.add_row("tokens/s", _fmt(step.tokens_per_s if step else None, ",.0f"))
        table.add_row("samples/s", _fmt(step.examples_per_s if step else None, ",.2f"))
        return Panel(table, title="optimisation")

    def _system(self) -> Panel:
        system = self.state.system
        table = Table.grid(padding=(0, 1))
        table.add_row("CPU", f"{system.cpu_percent:.0f} %" if system else "-")
        table.add_row("RSS", f"{system.rss_mb:,.0f} MB" if system else "-")
        table.add_row("RAM", f"{system.ram_percent:.0f} %" if system else "-")
        if system is None or not system.gpus:
            table.add_row("GPU", "n/a")
        for index, gpu in enumerate(system.gpus if system else []):
            memory = f"{gpu['memory_used_mb'] / 1024:.1f}/{gpu['memory_total_mb'] / 1024:.0f} GB"
            table.add_row(f"GPU{index}", f"{gpu['util_percent']:.0f} %  {memory}")
        return Panel(table, title="system")

    def _footer(self) -> Panel:
        s = self.state
        lines = []
        if s.checkpoint is not None:
            c = s.checkpoint
            lines.append(Text(f"last checkpoint: step {c.step} ({c.reason}) {c.path}"))
        else:
            lines.append(Text("last checkpoint: none yet", style="dim"))
        if s.sample is not None:
            width = max(20, self.console.width - 80)
            lines.append(Text(describe_samples(s.sample, width), style="green", no_wrap=True, overflow="ellipsis"))
        for warning in list(s.warnings):  # a snapshot: events arrive on another thread
            if isinstance(warning, Adjustment):
                lines.append(Text(f"recovery: {describe_note(warning)}", style="cyan"))
            else:
                lines.append(Text(f"warning: {describe_warning(warning)}", style="yellow"))
        return Panel(Group(*lines), title="checkpoints, samples and warnings")
