"""A training control that changes the run (the LR cut on exploding gradients) is deterministic and
survives kill -9: the same run twice is identical, and a run killed after the control fired and
resumed with `llmc resume` ends bit-identical to the uninterrupted one.

The gradient explosion is injected (``grad-spike``: the step's gradients x20 before clipping,
the loss untouched), so the control decides from the loop's own gradient norms, not the monitors'.
"""

import json
import os
import signal
import subprocess

import pytest

from llmc_cli.engine.record import by_step, read_metrics

pytestmark = pytest.mark.filterwarnings("ignore")
FIRES_AT = 12  # the control needs 10 earlier gradient norms to call one exploded
FAULTS = {"LLMC_FAULTS": f"grad-spike@step={FIRES_AT}"}


def args(data, model, name):
    return [
        "train", "--data", data, "--model", model, "--preset", "highspeed", "--max-length", "128",
        "--batch-size", "2", "--grad-accum", "1", "--limit", "40", "--max-steps", "20", "--lr", "5e-3",
        "--lora-dropout", "0.1", "--target-modules", "all-linear", "--checkpoint-interval", "2",
        "--eval-every", "10", "--run-name", name,
    ]  # fmt: skip


def losses(run_dir):
    return {step: record["loss"] for step, record in by_step(run_dir).items()}


def lr_cuts(run_dir):
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [(e["step"], e["cause"], e["action"]) for e in events if e["event"] == "Adjustment"]


def test_lr_control_is_deterministic_and_exact_across_kill_and_resume(
    llmc, llmc_command, tmp_path, tiny_model_dir, gsm8k_train, same_adapter
):
    runs = tmp_path / "runs"
    for name in ("first", "second"):
        result = llmc(*args(gsm8k_train, tiny_model_dir, name), cwd=tmp_path, env=FAULTS)
        assert result.returncode == 0, result.stderr
    first, second = runs / "first", runs / "second"
    assert lr_cuts(first) == [(FIRES_AT, "instability", "lowered-lr")]
    summary = json.loads((first / "summary.json").read_text())
    assert summary["lr_multiplier"] == 0.5 and summary["steps"] == 20
    assert losses(first) == losses(second) and len(losses(first)) == 20  # the same run twice: identical
    same_adapter(first / "final", second / "final")

    proc = subprocess.Popen(
        [*llmc_command, *map(str, args(gsm8k_train, tiny_model_dir, "killed"))],
        cwd=tmp_path,
        env={**os.environ, **FAULTS},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= FIRES_AT + 3:
            proc.send_signal(signal.SIGKILL)  # after the cut and the checkpoint that holds it
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    killed = runs / "killed"

    resumed = llmc("resume", "killed", cwd=tmp_path)  # no faults now: the cut must come from the checkpoint
    assert resumed.returncode == 0, resumed.stderr
    marker = next(record for record in read_metrics(killed) if record["type"] == "resume")
    assert marker["step"] > FIRES_AT  # it resumed from a checkpoint saved after the control fired
    assert losses(killed) == losses(first)  # exact float equality, step by step
    same_adapter(first / "final", killed / "final")
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["lr_multiplier"] == 0.5
    assert [(a["step"], a["cause"]) for a in summary["adjustments"]] == [(FIRES_AT, "instability")]
