"""Recovery from injected faults (``LLMC_FAULTS``) on a tiny Llama with LoRA, in-process.

The promises of RELIABILITY.md items 9-11: an out-of-memory step keeps the global step,
the effective batch and the data; a NaN step leaves the weights alone; repeated NaNs or a
spike roll back to the last good state with half the learning rate; recovery is bounded
and ends in a distinct exit code with a failure report and a valid checkpoint.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from llmc_cli import FineTuner
from llmc_cli.checkpoints import catalog
from llmc_cli.checkpoints.manifest import verify
from llmc_cli.errors import DivergenceError, OutOfMemory, UnexpectedFailure
from llmc_cli.events import Adjustment, CheckpointSaved, RolledBack, StepEnded

OPTS = dict(
    preset="highspeed",
    max_length=128,
    batch_size=4,
    grad_accum=2,
    limit=64,
    max_steps=16,
    lr=2e-3,
    lora_dropout=0.1,
    target_modules="all-linear",
    checkpoint_interval=5,
    eval_every=8,
    env_file=None,
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, gsm8k_train):
    """The uninterrupted run, and the events it emitted."""
    out = tmp_path_factory.mktemp("reference")
    events = []
    run = FineTuner(gsm8k_train, model=str(tiny_model_dir), output=out, **OPTS).subscribe(events.append).train()
    return run, events


def train(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, faults, **overrides):
    monkeypatch.setenv("LLMC_FAULTS", faults)
    events = []
    tuner = FineTuner(gsm8k_train, model=str(tiny_model_dir), output=tmp_path, **{**OPTS, **overrides})
    try:
        run = tuner.subscribe(events.append).train()
    finally:
        monkeypatch.delenv("LLMC_FAULTS")
    return run, events


def adjustments(events, action=None):
    return [e for e in events if isinstance(e, Adjustment) and (action is None or e.action == action)]


def lrs(events):
    return {e.step: e.lr for e in events if isinstance(e, StepEnded)}


def all_checkpoints_finite(run_dir):
    for checkpoint in (run_dir / "checkpoints").iterdir():
        for tensor in load_file(checkpoint / "adapter_model.safetensors").values():
            assert torch.isfinite(tensor).all(), checkpoint


def test_clean_run_needs_no_recovery_and_logs_the_clipping_threshold(reference, step_losses):
    run, events = reference
    assert adjustments(events) == [] and not any(isinstance(e, RolledBack) for e in events)
    steps = [e for e in events if isinstance(e, StepEnded)]
    assert [e.step for e in steps] == list(range(1, 17))
    assert all(0 < e.clip_threshold <= 1.0 for e in steps)


def test_oom_halves_the_micro_batch_keeps_step_batch_and_data(
    tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, reference, step_losses
):
    ref_run, ref_events = reference
    run, events = train(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, "oom@step=3")
    (action,) = adjustments(events)
    assert (action.step, action.cause, action.action) == (3, "oom-gpu", "halved-micro-batch")
    assert action.settings["micro_batch"] * action.settings["grad_accum"] == 4 * 2  # effective batch unchanged
    assert action.settings["micro_batch"] == 2

    # The global step went on from 3, and every step saw exactly the reference's tokens; the
    # losses differ only by the dropout masks (drawn per micro-batch) and the order of the sums.
    def data(evs):
        return [(e.step, e.tokens, e.target_tokens, e.examples) for e in evs if isinstance(e, StepEnded)]

    assert data(events) == data(ref_events) and len(data(events)) == 16
    assert step_losses(run) == pytest.approx(step_losses(ref_run), rel=1e-3)
    # What recovery learned is in every later checkpoint, so a resumed run keeps it.
    state = json.loads((run / "checkpoints/step-000015/trainer_state.json").read_text())
    assert state["recovery"]["split"] == 2


def test_recovered_micro_batch_survives_a_resume(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch):
    from llmc_cli.events import StepEnded as Step

    def stop_at_7(event):
        if isinstance(event, Step) and event.step == 7:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setenv("LLMC_FAULTS", "oom@step=2")
    tuner = FineTuner(gsm8k_train, model=str(tiny_model_dir), output=tmp_path, run_name="cut", **OPTS)
    with pytest.raises(Exception, match="llmc resume"):
        tuner.subscribe(stop_at_7).train()
    monkeypatch.delenv("LLMC_FAULTS")
    run = FineTuner.resume(tmp_path / "cut").train()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["recovery"]["split"] == 2


def test_eval_oom_shrinks_only_the_eval_batch(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, reference):
    ref_run, _ = reference
    run, events = train(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, "eval-oom@step=8")
    (action,) = adjustments(events)
    assert action.action == "halved-eval-batch" and action.settings["micro_batch"] == 4
    summary = json.loads((run / "summary.json").read_text())
    assert summary["recovery"]["split"] == 1 and summary["recovery"]["eval_split"] == 2
    ref_summary = json.loads((ref_run / "summary.json").read_text())
    assert summary["final_train_loss"] == ref_summary["final_train_loss"]  # training untouched
    assert summary["final_eval_loss"] == pytest.approx(ref_summary["final_eval_loss"], rel=1e-5)


def test_nan_step_is_skipped_with_weights_unchanged(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch):
    run, events = train(
        tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, "nan@step=4", checkpoint_interval=1, max_checkpoints=20
    )
    (action,) = adjustments(events)
    assert (action.step, action.cause, action.action) == (4, "non-finite", "skipped-batch")
    assert 4 not in {e.step for e in events if isinstance(e, StepEnded)}
    before, after = (load_file(run / f"checkpoints/step-00000{s}/adapter_model.safetensors") for s in (3, 4))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_repeated_nan_rolls_back_with_half_the_learning_rate(
    tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, reference
):
    _, ref_events = reference
    run, events = train(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, "nan@step=7-9")
    actions = [(a.step, a.action) for a in adjustments(events)]
    assert actions == [(7, "skipped-batch"), (8, "skipped-batch"), (9, "rolled-back")]
    (rollback,) = [e for e in events if isinstance(e, RolledBack)]
    saved_before = max(e.step for e in events if isinstance(e, CheckpointSaved) and e.step < 9)
    assert (rollback.step, rollback.from_step) == (saved_before, 9)  # the newest checkpoint before step 9
    ref_lr, got_lr = lrs(ref_events), lrs(events)
    assert all(got_lr[s] == pytest.approx(ref_lr[s] / 2, rel=1e-9) for s in range(saved_before + 1, 17))
    all_checkpoints_finite(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 16


def test_spike_rolls_back_and_a_repeating_one_is_skipped(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch):
    run, events = train(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, "spike@step=13:every")
    actions = [(a.step, a.cause, a.action) for a in adjustments(events)]
    assert actions == [(13, "spike", "rolled-back"), (13, "spike", "skipped-batch")]
    (rollback,) = [e for e in events if isinstance(e, RolledBack)]
    # The newest checkpoint before the spike: step 10 by interval, or an epoch's end (data-dependent).
    saved = [e.step for e in events if isinstance(e, CheckpointSaved) and e.step < 13]
    assert 10 in saved and rollback.step == max(saved)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["recovery"]["skipped_steps"] == [13]


def test_persistent_divergence_ends_with_exit_7_a_report_and_a_valid_checkpoint(
    tmp_path, tiny_model_dir, gsm8k_train, monkeypatch
):
    with pytest.raises(DivergenceError) as caught:
        train(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, "nan@step=3-16:every", run_name="bad")
    assert caught.value.exit_code == 7
    run = tmp_path / "bad"
    report = json.loads((run / "failure.json").read_text())
    assert report["cause"] == "divergence" and report["checkpoint"]
    assert [a["action"] for a in report["actions"]].count("rolled-back") == 3  # max_rollbacks
    assert verify(tmp_path / report["checkpoint"]).ok
    assert "Lower the learning rate" in (run / "failure.txt").read_text()
    all_checkpoints_finite(run)


def test_unreadable_batch_is_skipped(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch):
    run, events = train(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, "data@step=6")
    assert [(a.step, a.cause, a.action) for a in adjustments(events)] == [(6, "data", "skipped-batch")]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_oom_at_one_sequence_turns_on_checkpointing_then_gives_up(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch):
    with pytest.raises(OutOfMemory) as caught:
        train(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, "cpu-oom@step=2:every", batch_size=1, run_name="o")
    assert caught.value.exit_code == 8
    report = json.loads((tmp_path / "o/failure.json").read_text())
    assert report["cause"] == "oom-cpu"
    assert [a["action"] for a in report["actions"]] == ["gradient-checkpointing"]
    assert verify(tmp_path / report["checkpoint"]).ok  # the state after step 1


def test_unknown_error_saves_state_reports_and_resumes(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch):
    with pytest.raises(UnexpectedFailure, match="InjectedError") as caught:
        train(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, "error@step=4", run_name="e")
    assert caught.value.exit_code == 9
    run = tmp_path / "e"
    report = json.loads((run / "failure.json").read_text())
    assert report["cause"] == "other" and "Traceback" in (run / "failure.txt").read_text()
    assert report["checkpoint"].endswith("step-000003") and report["resume"].startswith("llmc resume")
    FineTuner.resume(run).train()
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_auto_recovery_off_fails_at_the_first_nan(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch):
    with pytest.raises(DivergenceError, match="auto_recovery=false"):
        train(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, "nan@step=2", auto_recovery=False)


def test_early_stopping_restores_the_best_adapter(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch):
    # A min_delta no real improvement reaches: the first scheduled eval stays the best.
    run, events = train(
        tmp_path,
        tiny_model_dir,
        gsm8k_train,
        monkeypatch,
        "",
        eval_every=2,
        enable_early_stopping=True,
        early_stopping_patience=2,
        early_stopping_min_delta=100.0,
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] and summary["steps"] == 6 and summary["restored_best_step"] == 2
    assert [a.action for a in adjustments(events)] == ["stopped", "restored-best"]
    best = load_file(run / "checkpoints/step-000002/adapter_model.safetensors")
    final = load_file(run / "final/adapter_model.safetensors")
    assert all(torch.equal(best[k], final[k]) for k in best)
    assert math.isfinite(summary["final_eval_loss"])


def test_oom_at_one_sequence_trains_on_with_gradient_checkpointing(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch):
    run, events = train(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, "cpu-oom@step=2", batch_size=1, max_steps=6)
    assert [a.action for a in adjustments(events)] == ["gradient-checkpointing"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["recovery"]["gradient_checkpointing"]
    assert all(math.isfinite(e.loss) for e in events if isinstance(e, StepEnded))


def test_a_run_that_rolled_back_and_never_beat_the_base_model_ends_diverged(
    tmp_path, tiny_model_dir, gsm8k_train, monkeypatch
):
    """Issue 13: never 'training complete' for a run that diverged and is no better than the base.
    An LR of 1e-30 leaves every evaluation equal to step 0's (none beats it); a NaN burst forces
    one rollback."""
    with pytest.raises(DivergenceError, match="no evaluation beat the base model") as caught:
        train(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch, "nan@step=3-5", lr=1e-30, eval_every=4)
    assert caught.value.exit_code == 7 and caught.value.report is not None
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and (run / "failure.txt").is_file()
    assert catalog.valid_before(run)[0] is not None  # a checkpoint that verifies is kept
