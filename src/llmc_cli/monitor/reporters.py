"""Metric sinks for experiment trackers: TensorBoard (always available), W&B and MLflow (when installed).

One mapping from events to named scalars (:func:`scalars`) feeds every tracker, so the
three show the same names: ``train/loss``, ``eval/loss``, ``system/rss_mb``... Scalars are
keyed by optimizer step; system samples take the latest step seen.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from llmc_cli import durable
from llmc_cli.durable import disk_error
from llmc_cli.errors import ConfigError
from llmc_cli.events import CheckpointSaved, EvalEnded, Event, RunEnded, SamplesGenerated, StepEnded, SystemSampled

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
    if isinstance(event, SamplesGenerated):
        values = {"samples/seconds": event.duration_s}
        if event.exact_match is not None:
            values["samples/exact_match"] = event.exact_match
            values["samples/format_adherence"] = event.format_adherence
        if event.rouge_l is not None:
            values["samples/rouge_l"] = event.rouge_l
            values["samples/chrf"] = event.chrf
        return values
    return None


class _Reporter:
    """Common event handling: track the step, hand scalars to ``write``, close at the end."""

    def __init__(self) -> None:
        self.step = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepEnded | EvalEnded | CheckpointSaved | SamplesGenerated):
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


class ExternalReporter(_Reporter):
    """W&B or MLflow behind the common event handling (``wandb_tracker.py``, ``mlflow_tracker.py``).

    A tracker that fails mid-run is reported once and dropped: training goes on with the others.
    Its run id is kept in the run directory's ``trackers.json``, so a resume continues it.
    """

    def __init__(self, name: str, tracker_class, run_dir: Path, config: dict[str, Any], tags: dict[str, str]) -> None:
        super().__init__()
        self.name = name
        ids_file = run_dir / IDS_FILE
        remembered = _read_ids(ids_file)
        self.tracker = tracker_class(run_dir, config, tags, remembered.get(name, {}))
        durable.write_json(ids_file, {**remembered, name: self.tracker.ids})
        self.failed = False
        self.closed = False
        self.status, self.adapter_dir, self.summary = "interrupted", None, {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunEnded):
            self.status, self.adapter_dir, self.summary = event.status, event.adapter_dir, event.summary
        super().__call__(event)

    def write(self, values: dict[str, float], step: int) -> None:
        if self.failed:
            return
        try:
            self.tracker.write(values, step)
        except Exception as exc:  # noqa: BLE001 - a tracker's outage must not stop training
            self.failed = True
            print(f"llmc: {self.name} stopped taking metrics ({type(exc).__name__}: {exc}); training goes on, "
                  "metrics.jsonl and the other trackers keep every value.", file=sys.stderr)  # fmt: skip

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.tracker.finish(self.status, self.adapter_dir, self.summary)
        except Exception as exc:  # noqa: BLE001 - the run's outcome does not depend on its tracker
            print(f"llmc: closing the {self.name} run failed ({type(exc).__name__}: {exc}).", file=sys.stderr)


def _read_ids(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _tracker_class(name: str):
    if name == "mlflow":
        from llmc_cli.monitor.mlflow_tracker import MlflowTracker

        return MlflowTracker
    from llmc_cli.monitor.wandb_tracker import WandbTracker

    return WandbTracker


PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
IDS_FILE = "trackers.json"  # each external tracker's run id, for a resume to continue it


def check_installed(names: tuple[str, ...]) -> None:
    """Fail before a run directory exists when a requested tracker cannot start: its package is
    missing, or (MLflow) its tracking store refuses to be used."""
    missing = [name for name in names if importlib.util.find_spec(PACKAGES[name]) is None]
    if missing:
        raise ConfigError(
            f"--report-to asks for {', '.join(missing)}, which is not installed.",
            hint=f"pip install {' '.join(PACKAGES[m] for m in missing)}, or drop it from --report-to.",
        )
    if "mlflow" in names:
        from llmc_cli.monitor.mlflow_tracker import client

        client()


def create(
    names: tuple[str, ...], run_dir: Path, config: dict[str, Any], tags: dict[str, str] | None = None
) -> list[_Reporter]:
    """The trackers of ``names`` for this run (``tags``: preset, family, model, for those that keep tags).

    Raises:
        ConfigError: a tracker cannot start (exit 2, before the model is loaded), naming it and the fix.
    """
    check_installed(names)
    tags = {"llmc.preset": str(config.get("preset", "")), **(tags or {})}
    created: list[_Reporter] = []
    try:
        for name in names:
            if name == "tensorboard":
                created.append(TensorBoardReporter(run_dir, config))
            else:
                created.append(ExternalReporter(name, _tracker_class(name), run_dir, config, tags))
    except BaseException:
        for reporter in created:  # a tracker run opened already is closed, not left running
            if isinstance(reporter, ExternalReporter):
                reporter.status = "failed"
            reporter.close()
        raise
    return created
