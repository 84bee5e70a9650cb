"""Trackers get the same scalars by step: TensorBoard, and the real MLflow (SQLite store) and W&B (offline)."""

import json
import threading

import pytest
from tests.conftest import wandb_history

from llmc_cli.errors import ConfigError
from llmc_cli.events import EvalEnded, RunEnded, StepEnded, SystemSampled
from llmc_cli.monitor import reporters

STEP = StepEnded(3, 10, 0.3, 2.5, 1e-4, 0.7, 2048, 1200, 8, 900.0, 3.5, 3.0, 7.0, 1e-3)
EVENTS = [
    STEP,
    SystemSampled(150.0, 1200.0, 40.0, [{"util_percent": 90.0, "memory_used_mb": 5000.0, "memory_total_mb": 8e4}]),
    EvalEnded(3, 2.6, 13.5, 1000, 0.5),
    RunEnded("completed", "runs/run-1", "runs/run-1/final", {}),
]


def test_scalars_cover_train_eval_and_system():
    assert reporters.scalars(STEP)["train/update_to_weight_ratio"] == 1e-3
    system = reporters.scalars(EVENTS[1])
    assert system["system/gpu0_util_percent"] == 90.0 and system["system/rss_mb"] == 1200.0
    assert reporters.scalars(EVENTS[3]) is None


def _feed(reporter, events, thread=True):
    """Deliver events as the bus does: from a thread other than the one that created the tracker."""
    worker = threading.Thread(target=lambda: [reporter(event) for event in events])
    worker.start() if thread else worker.run()
    worker.join() if thread else None


def test_mlflow_one_named_run_with_params_tags_metrics_and_artifacts_resumed_in_place(monkeypatch, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts of a SQLite store go to ./mlruns
    run_dir = tmp_path / "run-6"
    run_dir.mkdir()
    (run_dir / "final").mkdir()
    (run_dir / "final" / "adapter_config.json").write_text("{}")
    (reporter,) = reporters.create(("mlflow",), run_dir, {"lora_r": 16, "preset": "quality"}, {"llmc.family": "llama"})
    ended = RunEnded("interrupted", str(run_dir), None, {})
    _feed(reporter, [STEP, EVENTS[1], EVENTS[2], ended])  # the bus's thread: not the one that started the run
    again = StepEnded(4, 10, 0.4, 2.4, 1e-4, 0.7, 2048, 1200, 8, 900.0, 3.5, 3.0, 7.0, None)
    (resumed,) = reporters.create(("mlflow",), run_dir, {"lora_r": 16, "preset": "quality"})  # llmc resume
    _feed(resumed, [again, RunEnded("completed", str(run_dir), str(run_dir / "final"), {"steps": 4})])

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_name == "run-6" and run.info.status == "FINISHED"
    assert run.data.params == {"lora_r": "16", "preset": "quality"}
    assert run.data.tags["llmc.preset"] == "quality" and run.data.tags["llmc.family"] == "llama"
    assert run.data.tags["llmc.resumed"] == "true"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")] == [(3, 2.5), (4, 2.4)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "system/rss_mb")] == [3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"summary.json", "adapter"}
    assert client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path)) and json.loads(
        (tmp_path / "summary.json").read_text()) == {"steps": 4}  # fmt: skip
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == run.info.run_id


def test_a_refused_mlflow_store_is_a_config_error_naming_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    with pytest.raises(ConfigError, match="mlflow tracker cannot use the tracking store") as caught:
        reporters.check_installed(("tensorboard", "mlflow"))
    assert "MLFLOW_ALLOW_FILE_STORE=true" in caught.value.hint and "sqlite:///mlflow.db" in caught.value.hint


@pytest.fixture
def fresh_wandb():
    """W&B reads its environment into a process-wide singleton once: start and leave each test without one."""
    import wandb

    wandb.teardown()
    yield
    wandb.teardown()


def test_wandb_without_a_login_is_a_config_error_and_closes_the_trackers_opened_before_it(
    monkeypatch, tmp_path, fresh_wandb
):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no W&B settings
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_dir = tmp_path / "run-8"
    run_dir.mkdir()
    with pytest.raises(ConfigError, match="wandb tracker cannot start a run") as caught:
        reporters.create(("mlflow", "wandb"), run_dir, {"lora_r": 16})
    assert "wandb login" in caught.value.hint and "WANDB_MODE=offline" in caught.value.hint
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"  # the MLflow run opened first is not left running


def test_a_tracker_failing_mid_run_is_reported_once_and_training_goes_on(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_dir = tmp_path / "run-7"
    run_dir.mkdir()
    (reporter,) = reporters.create(("mlflow",), run_dir, {"lora_r": 16})

    def outage(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(reporter.tracker.client, "log_batch", outage)
    for event in EVENTS:
        reporter(event)  # no exception reaches the bus
    err = capsys.readouterr().err
    assert err.count("mlflow stopped taking metrics (ConnectionError: tracking server went away)") == 1


def test_wandb_offline_run_holds_every_scalar_by_step_and_resume_keeps_its_id(monkeypatch, tmp_path, fresh_wandb):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run-5"
    run_dir.mkdir()
    (reporter,) = reporters.create(("wandb",), run_dir, {"lr": 1e-4})
    _feed(reporter, EVENTS)
    later = StepEnded(4, 10, 0.4, 2.4, 1e-4, 0.7, 2048, 1200, 8, 900.0, 3.5, 3.0, 7.0, None)
    (resumed,) = reporters.create(("wandb",), run_dir, {"lr": 1e-4})
    _feed(resumed, [later, RunEnded("completed", str(run_dir), None, {})])
    rows, ids = wandb_history(run_dir)
    assert ids == {json.loads((run_dir / "trackers.json").read_text())["wandb"]["id"]}  # one run, continued
    assert [row["_step"] for row in rows] == [3, 4]  # a step's scalars (train, system, eval) in one row
    assert rows[0]["train/loss"] == 2.5 and rows[0]["eval/loss"] == 2.6 and rows[0]["system/rss_mb"] == 1200.0
    assert rows[1]["train/loss"] == 2.4


def test_missing_tracker_is_a_config_error_with_the_install_command(monkeypatch):
    monkeypatch.setattr(reporters.importlib.util, "find_spec", lambda name: None if name == "wandb" else object())
    with pytest.raises(ConfigError, match="wandb, which is not installed") as caught:
        reporters.check_installed(("tensorboard", "wandb"))
    assert caught.value.hint.startswith("pip install wandb")


def test_tensorboard_drops_scalars_on_a_full_disk_and_starts_a_new_file_after(tmp_path, capsys):
    import errno

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llmc_cli.monitor.reporters import TensorBoardReporter

    reporter = TensorBoardReporter(tmp_path, {})
    reporter.write({"train/loss": 3.0}, 1)

    class FullDisk:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    reporter._records = FullDisk()
    reporter.write({"train/loss": 2.0}, 2)  # dropped, said once
    assert reporter.lost == 1 and "dropping them until space returns" in capsys.readouterr().err
    reporter.write({"train/loss": 1.0}, 3)
    reporter.close()
    assert reporter.files == 2 and len(list((tmp_path / "tb").iterdir())) == 2
    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    assert [(s.step, s.value) for s in accumulator.Scalars("train/loss")] == [(1, 3.0), (3, 1.0)]
