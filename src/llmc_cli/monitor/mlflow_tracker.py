"""One MLflow run per llmc run, through ``MlflowClient`` with an explicit run id.

MLflow's fluent API (``mlflow.start_run`` / ``mlflow.log_metrics``) keeps the active run per
thread; llmc logs from the event bus's thread, so the fluent calls opened a second, unnamed run
that held every metric. The client takes the run id on every call instead, from any thread.

The run is named after the run directory, carries the resolved config as params and
``llmc.*`` tags (preset, family, model, run directory), gets every scalar at its optimizer step,
and at the end ``summary.json`` and the final adapter as artifacts (where the store accepts
them; a store that does not is warned about, not fatal). Its id is kept in the run directory's
``trackers.json``: ``llmc resume`` continues the same MLflow run; if that run is gone from the
store (another tracking URI), a new one is started, tagged ``llmc.resumed_from`` with the old id.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from llmc_cli.errors import ConfigError

EXPERIMENT_DEFAULT = "llmc"  # MLFLOW_EXPERIMENT_NAME overrides
PARAM_CHARS = 500  # the shortest value limit among MLflow stores
BATCH = 100  # params or tags per log_batch call (MLflow's limit)
STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


def tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()  # MLFLOW_TRACKING_URI, else MLflow's own default


def client():
    """A client on the configured store, checked by one read.

    Raises:
        ConfigError: the store cannot be used (a bad URI, the file store MLflow 3 refuses by
            default, an unreachable server, an unwritable database), naming the setting and the fix.
    """
    from mlflow import MlflowClient

    uri = tracking_uri()
    try:
        made = MlflowClient(tracking_uri=uri)
        made.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - every way a store can refuse is the user's setting
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        first = re.split(r"(?<=[.!])\s", text, maxsplit=1)[0][:300]  # its first sentence
        hint = (
            "Set MLFLOW_TRACKING_URI to a store MLflow accepts, e.g. sqlite:///mlflow.db, "
            "or drop mlflow from --report-to."
        )
        if uri.startswith("file:") or "://" not in uri:
            hint = (
                "MLflow 3 keeps file stores read-only unless MLFLOW_ALLOW_FILE_STORE=true: set that, or use "
                "MLFLOW_TRACKING_URI=sqlite:///mlflow.db (or drop mlflow from --report-to)."
            )
        raise ConfigError(f"The mlflow tracker cannot use the tracking store '{uri}' ({first}).", hint=hint) from None
    return made


class MlflowTracker:
    """The MLflow side of a run: created before the model loads, fed scalars, closed once."""

    def __init__(self, run_dir: Path, config: dict[str, Any], tags: dict[str, str], remembered: dict[str, Any]):
        from mlflow.entities import Param, RunTag

        self.client = client()
        self.run_dir = run_dir
        previous = remembered.get("run_id")
        self.run_id = self._continued(previous)
        self.continued = self.run_id is not None
        if self.run_id is None:
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT_DEFAULT)
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            all_tags = {"llmc.run_dir": str(run_dir.resolve()), **tags}
            if previous:
                all_tags["llmc.resumed_from"] = previous
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name, tags=all_tags).info.run_id
            params = [Param(key, str(value)[:PARAM_CHARS]) for key, value in sorted(config.items())]
            for start in range(0, len(params), BATCH):
                self.client.log_batch(self.run_id, params=params[start : start + BATCH])
        else:
            self.client.log_batch(self.run_id, tags=[RunTag("llmc.resumed", "true")])
        self.ids = {"run_id": self.run_id, "tracking_uri": tracking_uri()}

    def _continued(self, run_id: str | None) -> str | None:
        if not run_id:
            return None
        try:
            self.client.update_run(run_id, status="RUNNING")
        except Exception:  # noqa: BLE001 - gone from this store: a new run, tagged with the old id
            return None
        return run_id

    def write(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items() if value is not None]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: str, adapter_dir: str | None, summary: dict[str, Any]) -> None:
        """Artifacts (``summary.json``, the final adapter) where the store takes them, then the run's status."""
        try:
            if summary:  # the run's summary as the event carries it (the file is written after the event)
                self.client.log_dict(self.run_id, summary, "summary.json")
            if adapter_dir and Path(adapter_dir).is_dir():
                self.client.log_artifacts(self.run_id, adapter_dir, artifact_path="adapter")
        except Exception as exc:  # noqa: BLE001 - metrics and params are in; artifacts are an extra
            print(f"llmc: MLflow did not take the run's artifacts ({type(exc).__name__}: {exc}); "
                  "its metrics and params are logged.", file=sys.stderr)  # fmt: skip
        self.client.set_terminated(self.run_id, status=STATUS.get(status, "FINISHED"))
