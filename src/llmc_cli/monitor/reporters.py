"""Metric sinks for experiment trackers: TensorBoard (always available), W&B and MLflow (when installed).

One mapping from events to named scalars (:func:`scalars`) feeds every tracker, so the
three show the same names: ``train/loss``, ``eval/loss``, ``system/rss_mb``... Scalars are
keyed by optimizer step; system samples take the latest step seen.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from llmc_cli.durable import disk_error
from llmc_cli.errors import ConfigError
from llmc_cli.events import CheckpointSaved, EvalEnded, Event, RunEnded, StepEnded, SystemSampled

REPORTERS = ("tensorboard", "wandb", "mlflow")


def scalars(event: Event) -> dict[str, float] | None:
    """The named values an event contributes to a tracker (None for other events)."""
    if isinstance(event, StepEnded):
        values = {
            "train/loss": event.loss,
            "train/learning_rate": event.lr,
            "train/grad_norm": event.grad_norm,
            "train/tokens_per_s": event.tokens_per_s,
            "train/examples_per_s": event.examples_per_s,
        }
        if event.update_ratio is not None:
            values["train/update_to_weight_ratio"] = event.update_ratio
        return values
    if isinstance(event, EvalEnded):
        return {"eval/loss": event.eval_loss, "eval/perplexity": event.perplexity}
    if isinstance(event, SystemSampled):
        values = {"system/cpu_percent": event.cpu_percent, "system/rss_mb": event.rss_mb}
        values["system/ram_percent"] = event.ram_percent
        for index, gpu in enumerate(event.gpus):
            values[f"system/gpu{index}_util_percent"] = gpu["util_percent"]
            values[f"system/gpu{index}_memory_mb"] = gpu["memory_used_mb"]
        for index, allocated in enumerate(event.torch_allocated_mb):
            values[f"system/cuda{index}_torch_allocated_mb"] = allocated
        return values
    if isinstance(event, CheckpointSaved):
        return {"checkpoint/save_seconds": event.duration_s}
    return None


class _Reporter:
    """Common event handling: track the step, hand scalars to ``write``, close at the end."""

    def __init__(self) -> None:
        self.step = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepEnded | EvalEnded | CheckpointSaved):
            self.step = event.step
        values = scalars(event)
        if values:
            self.write(values, self.step)
        elif isinstance(event, RunEnded):
            self.close()

    def write(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TensorBoardReporter(_Reporter):
    """Event files under ``run_dir/tb``: ``tensorboard --logdir runs/`` shows every run.

    Records are written synchronously (tensorboard's own record format and protobufs), each
    flushed to the OS: no background writer thread that dies with a traceback on a full disk.
    When a write fails for lack of space the file is closed and the scalars dropped (counted);
    the next write, once space is back, starts a new event file, which TensorBoard reads after
    the old one (a torn last record in that one is skipped as truncated).
    """

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        super().__init__()
        self.directory = run_dir / "tb"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.files = 0
        self.lost = 0
        self._records = None

    def write(self, values: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event as TbEvent
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=name, simple_value=value) for name, value in values.items()])
        self._append(TbEvent(wall_time=time.time(), step=step, summary=summary))

    def _append(self, event) -> None:
        try:
            if self._records is None:
                self._open()
            self._records.write(event.SerializeToString())
            self._records.flush()
        except OSError as exc:
            if not disk_error(exc):
                raise
            self.lost += 1
            if self.lost == 1:
                print(f"llmc: cannot write TensorBoard events to {self.directory} ({exc.strerror}); "
                      "dropping them until space returns.", file=sys.stderr)  # fmt: skip
            self._discard()

    def _open(self) -> None:
        from tensorboard.compat.proto.event_pb2 import Event as TbEvent
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.files += 1
        name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}.{self.files}"
        self._records = RecordWriter((self.directory / name).open("ab"))
        self._records.write(TbEvent(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

    def _discard(self) -> None:
        records, self._records = self._records, None
        if records is not None:
            try:
                records.close()
            except OSError:  # the close's flush meets the same full disk: the file keeps what it has
                pass

    def close(self) -> None:
        self._discard()


class WandbReporter(_Reporter):
    """A Weights & Biases run named after the run directory (project from WANDB_PROJECT, else llmc)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        super().__init__()
        import os

        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "llmc"), name=run_dir.name, dir=str(run_dir), config=config
        )

    def write(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowReporter(_Reporter):
    """An MLflow run named after the run directory (tracking URI from MLFLOW_TRACKING_URI)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        super().__init__()
        import mlflow

        self.mlflow = mlflow
        mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params({key: str(value)[:500] for key, value in config.items()})

    def write(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


CLASSES = {"tensorboard": TensorBoardReporter, "wandb": WandbReporter, "mlflow": MlflowReporter}
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_installed(names: tuple[str, ...]) -> None:
    """Fail before training when a requested tracker's package is missing."""
    missing = [name for name in names if importlib.util.find_spec(PACKAGES[name]) is None]
    if missing:
        raise ConfigError(
            f"--report-to asks for {', '.join(missing)}, which is not installed.",
            hint=f"pip install {' '.join(PACKAGES[m] for m in missing)}, or drop it from --report-to.",
        )


def create(names: tuple[str, ...], run_dir: Path, config: dict[str, Any]) -> list[_Reporter]:
    check_installed(names)
    return [CLASSES[name](run_dir, config) for name in names]
