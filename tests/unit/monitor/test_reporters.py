"""Trackers get the same scalars by step; W&B and MLflow are driven through their public calls."""

import sys
import types

import pytest

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


def test_wandb_reporter(monkeypatch, tmp_path):
    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", step, sorted(values)))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw["name"], kw["config"])) or Run())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(reporters.importlib.util, "find_spec", lambda name: object())
    (reporter,) = reporters.create(("wandb",), tmp_path / "run-5", {"lr": 1e-4})
    for event in EVENTS:
        reporter(event)
    assert calls[0] == ("init", "run-5", {"lr": 1e-4})
    assert [c[1] for c in calls if c[0] == "log"] == [3, 3, 3]  # system sample keyed by the latest step
    assert "eval/loss" in calls[3][2] and calls[-1] == ("finish",)


def test_mlflow_reporter(monkeypatch, tmp_path):
    calls = []
    fake = types.SimpleNamespace(
        start_run=lambda run_name: calls.append(("start", run_name)),
        log_params=lambda params: calls.append(("params", params)),
        log_metrics=lambda values, step: calls.append(("metrics", step, sorted(values))),
        end_run=lambda: calls.append(("end",)),
    )
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setattr(reporters.importlib.util, "find_spec", lambda name: object())
    (reporter,) = reporters.create(("mlflow",), tmp_path / "run-6", {"lora_r": 16})
    for event in EVENTS:
        reporter(event)
    assert calls[0] == ("start", "run-6") and calls[1] == ("params", {"lora_r": "16"})
    assert [c[0] for c in calls[2:]] == ["metrics", "metrics", "metrics", "end"]


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
