"""Retention, lookup and fallback rules; optimizer, scheduler and RNG round trips."""

import json
import random

import numpy as np
import pytest
import torch

from llmc_cli.checkpoints import catalog, retention
from llmc_cli.checkpoints import state as files
from llmc_cli.checkpoints.commit import commit
from llmc_cli.errors import CheckpointError


def _fake_run(tmp_path, losses):
    """A run with one checkpoint per (step, eval loss)."""
    (tmp_path / "config.json").write_text("{}")
    for step, loss in losses:

        def write(directory, step=step, loss=loss):
            (directory / "adapter_model.safetensors").write_bytes(b"x" * step)
            return {"step": step, "epoch": step / 10, "metrics": {"eval_loss": loss} if loss else {}}

        commit(tmp_path / "checkpoints", catalog.checkpoint_name(step), write)
    return tmp_path


def test_retention_keeps_newest_and_best(tmp_path):
    run = _fake_run(tmp_path, [(2, 3.0), (4, 1.0), (6, 2.0), (8, None), (10, 2.5)])
    found = catalog.entries(run)
    assert [e.step for e in found] == [2, 4, 6, 8, 10]
    doomed = retention.beyond_retention(found, keep_last=2, keep_best=1, metric="eval_loss")
    assert [e.step for e in doomed] == [2, 6]
    assert catalog.best(found).step == 4
    assert [e.step for e in retention.beyond_retention(found, 1, 0, "eval_loss")] == [2, 4, 6, 8]


def test_checkpoint_specs_and_fallback_past_corrupt_ones(tmp_path):
    run = _fake_run(tmp_path, [(2, 3.0), (4, 1.0), (6, 2.0)])
    assert catalog.checkpoint_by_spec(run, "latest").name == "step-000006"
    assert catalog.checkpoint_by_spec(run, "best").name == "step-000004"
    assert catalog.checkpoint_by_spec(run, "step-2").name == "step-000002"
    with pytest.raises(CheckpointError, match="no checkpoint at step 5"):
        catalog.checkpoint_by_spec(run, "5")
    newest = run / "checkpoints" / "step-000006" / "adapter_model.safetensors"
    newest.write_bytes(b"y" * 6)  # same size, different content
    (run / "checkpoints" / "step-000004" / "adapter_model.safetensors").unlink()
    chosen, refused = catalog.newest_valid(run, catalog.checkpoint_by_spec(run, "latest"))
    assert chosen.name == "step-000002"
    assert [r.path.name for r in refused] == ["step-000006", "step-000004"]
    assert "sha256" in refused[0].reason() and "missing" in refused[1].reason()
    (run / "checkpoints" / "step-000002" / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="passes verification"):
        catalog.newest_valid(run, catalog.checkpoint_by_spec(run, "step-6"))


def test_runs_are_found_by_name_number_or_path(tmp_path):
    runs = tmp_path / "runs"
    (runs / "run-7").mkdir(parents=True)
    (runs / "run-7" / "config.json").write_text("{}")
    assert catalog.resolve_run("run-7", runs) == runs / "run-7"
    assert catalog.resolve_run("7", runs) == runs / "run-7"
    assert catalog.resolve_run(str(runs / "run-7"), runs) == runs / "run-7"
    with pytest.raises(CheckpointError, match="Runs in .*run-7"):
        catalog.resolve_run("run-8", runs)


def test_optimizer_and_scheduler_state_round_trip_exactly(tmp_path):
    from transformers import get_scheduler

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]

    def make():
        optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
        return optimizer, get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=10)

    optimizer, scheduler = make()
    for _ in range(3):
        sum(p.square().sum() for p in params).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    files.save_optimizer(optimizer, tmp_path)
    files.save_scheduler(scheduler, tmp_path)
    fresh, fresh_scheduler = make()
    assert not fresh.state_dict()["state"]  # a fresh optimizer differs from the saved one
    files.load_optimizer(fresh, tmp_path)
    files.load_scheduler(fresh_scheduler, tmp_path)
    saved, loaded = optimizer.state_dict(), fresh.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]
    for index, values in saved["state"].items():
        for key, value in values.items():
            assert torch.equal(loaded["state"][index][key], value), (index, key)
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    for _ in range(5):  # the learning rate of every remaining step matches
        scheduler.step()
        fresh_scheduler.step()
        assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert "pickle" not in json.dumps(files.read_json(tmp_path / files.OPTIMIZER_GROUPS))


def test_rng_states_restore_the_next_draws(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    files.save_rng(tmp_path)
    expected = (random.random(), np.random.rand(), torch.rand(3), torch.randint(0, 2**62, (4,)))
    random.random(), np.random.rand(), torch.rand(8)  # move every generator on
    files.restore_rng(files.load_rng(tmp_path))
    got = (random.random(), np.random.rand(), torch.rand(3), torch.randint(0, 2**62, (4,)))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])


def test_manager_saves_on_interval_time_and_never_twice_per_step(tmp_path, monkeypatch):
    from llmc_cli.checkpoints import manager as manager_module
    from llmc_cli.checkpoints.manager import CheckpointManager, Policy
    from llmc_cli.events import EventBus

    now = [1000.0]
    monkeypatch.setattr(manager_module.time, "monotonic", lambda: now[0])
    (tmp_path / "config.json").write_text("{}")
    policy = Policy(
        interval_steps=10, interval_minutes=2.0, keep_last=2, keep_best=1, metric="eval_loss", on_error="continue"
    )
    events = []
    bus = EventBus()
    bus.subscribe(events.append)
    with bus:
        checkpoints = CheckpointManager(tmp_path, policy, bus)
        assert [checkpoints.due(s) for s in (1, 9, 10)] == [False, False, True]
        now[0] += 121  # two minutes and a second since the manager started
        assert checkpoints.due(3)
        for step, loss in ((3, 2.0), (10, 1.0), (13, 3.0), (20, 4.0)):
            checkpoints.save(step, lambda d, s=step, v=loss: {"step": s, "metrics": {"eval_loss": v}}, "interval")
        assert not checkpoints.due(20)  # just saved
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000010", "step-000013", "step-000020"]  # newest two and the best
    saved = [e for e in events if type(e).__name__ == "CheckpointSaved"]
    assert [e.step for e in saved] == [3, 10, 13, 20] and saved[2].removed == ["step-000003"]


def test_a_newest_checkpoint_without_its_manifest_is_refused_aloud(tmp_path):
    """Issue 13: resume passed over such a checkpoint without a word."""
    run = _fake_run(tmp_path, [(2, 3.0), (4, 1.0)])
    (run / "checkpoints" / "step-000004" / "manifest.json").unlink()
    chosen, refused = catalog.newest_valid(run, catalog.checkpoint_by_spec(run, "latest"))
    assert chosen.name == "step-000002"
    assert [(r.path.name, r.reason()) for r in refused] == [
        ("step-000004", "manifest.json is missing (an unfinished or damaged checkpoint)")
    ]
