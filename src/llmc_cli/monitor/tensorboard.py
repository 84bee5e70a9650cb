"""TensorBoard event files under ``run_dir/tb``: ``tensorboard --logdir runs/`` shows every run.

Scalars are keyed by optimizer step (system metrics by the latest step seen), so a resumed
run continues its curves; TensorBoard keeps the later value of a step.
"""

from __future__ import annotations

from pathlib import Path

from llmc_cli.engine.events import CheckpointSaved, EvalEnded, Event, RunEnded, StepEnded, SystemSampled


class TensorBoardSink:
    """An event subscriber writing scalars with ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, run_dir: Path, flush_secs: int = 10) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"), flush_secs=flush_secs)
        self.step = 0

    def __call__(self, event: Event) -> None:
        add = self.writer.add_scalar
        if isinstance(event, StepEnded):
            self.step = event.step
            add("train/loss", event.loss, event.step)
            add("train/learning_rate", event.lr, event.step)
            add("train/grad_norm", event.grad_norm, event.step)
            add("train/tokens_per_s", event.tokens_per_s, event.step)
            add("train/examples_per_s", event.examples_per_s, event.step)
            if event.update_ratio is not None:
                add("train/update_to_weight_ratio", event.update_ratio, event.step)
        elif isinstance(event, EvalEnded):
            add("eval/loss", event.eval_loss, event.step)
            add("eval/perplexity", event.perplexity, event.step)
        elif isinstance(event, SystemSampled):
            add("system/cpu_percent", event.cpu_percent, self.step)
            add("system/rss_mb", event.rss_mb, self.step)
            add("system/ram_percent", event.ram_percent, self.step)
            for index, gpu in enumerate(event.gpus):
                add(f"system/gpu{index}_util_percent", gpu["util_percent"], self.step)
                add(f"system/gpu{index}_memory_mb", gpu["memory_used_mb"], self.step)
        elif isinstance(event, CheckpointSaved):
            add("checkpoint/save_seconds", event.duration_s, event.step)
        elif isinstance(event, RunEnded):
            self.close()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
