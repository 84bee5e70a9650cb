"""Resume continues exactly: per-step losses and final adapter weights equal an uninterrupted run.

In-process runs on a tiny Llama with LoRA dropout on; the interruption is a real SIGTERM
delivered to this process (the engine's handler turns it into a stop at the next step).
"""

import json
import os
import signal

import pytest

from llmc_cli import FineTuner
from llmc_cli.errors import RunInterrupted
from llmc_cli.events import CheckpointSaved, RunResumed, StepEnded

OPTS = dict(
    preset="highspeed",
    max_length=128,
    batch_size=2,
    limit=40,
    epochs=2,
    lr=5e-3,
    lora_dropout=0.1,
    target_modules="all-linear",
    checkpoint_interval=3,
    env_file=None,
)


def sigterm_at(step):
    def handler(event):
        if isinstance(event, StepEnded) and event.step == step:
            os.kill(os.getpid(), signal.SIGTERM)

    return handler


@pytest.mark.parametrize("grad_accum,stop_after", [(1, 4), (3, 5)])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(
    tmp_path, tiny_model_dir, gsm8k_train, grad_accum, stop_after, step_losses, same_adapter
):
    common = dict(model=str(tiny_model_dir), output=tmp_path, grad_accum=grad_accum, **OPTS)
    reference = FineTuner(gsm8k_train, run_name="reference", **common).train()

    events = []
    cut = FineTuner(gsm8k_train, run_name="cut", **common).subscribe(events.append).subscribe(sigterm_at(stop_after))
    with pytest.raises(RunInterrupted, match="llmc resume"):
        cut.train()
    stopped = max(e.step for e in events if isinstance(e, StepEnded))
    # The stop lands at the next step boundary; that step's checkpoint is the interrupt save,
    # or the interval save when both fall on the same step (it is not written twice).
    assert any(isinstance(e, CheckpointSaved) and e.step == stopped for e in events)
    run_dir = tmp_path / "cut"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"

    resumed_events = []
    FineTuner.resume(run_dir, output=tmp_path).subscribe(resumed_events.append).train()
    resumed = next(e for e in resumed_events if isinstance(e, RunResumed))
    assert resumed.step == stopped
    first_step = min(e.step for e in resumed_events if isinstance(e, StepEnded))
    assert first_step == stopped + 1  # nothing repeated, nothing skipped

    expected, got = step_losses(reference), step_losses(run_dir)
    assert len(expected) > stopped + 3  # the run crosses an epoch boundary after the stop
    assert got == expected  # exact float equality, step by step
    same_adapter(reference / "final", run_dir / "final")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == len(expected)


def test_resume_from_every_checkpoint_reaches_the_same_weights(tmp_path, tiny_model_dir, gsm8k_train, same_adapter):
    common = dict(model=str(tiny_model_dir), output=tmp_path, grad_accum=1, **OPTS)
    reference = FineTuner(gsm8k_train, run_name="reference", **common).train()
    checkpoints = sorted((reference / "checkpoints").iterdir())
    assert len(checkpoints) >= 3  # interval and epoch-end saves, rotated to max_checkpoints
    for checkpoint in checkpoints[:-1]:
        copy = tmp_path / f"from-{checkpoint.name}"
        copy.mkdir()
        (copy / "config.json").write_bytes((reference / "config.json").read_bytes())
        FineTuner.resume(copy, checkpoint=str(checkpoint), output=tmp_path).train()
        same_adapter(reference / "final", copy / "final")
