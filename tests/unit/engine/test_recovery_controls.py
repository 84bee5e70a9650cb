"""Pure logic of recovery and the training controls: fault specs, classification, decisions, controls."""

import errno
import json
import math

import pytest
import torch

from llmc_cli import faults
from llmc_cli.engine.events import Adjustment
from llmc_cli.engine.failure import render, write_failure_report
from llmc_cli.engine.recovery import Budget, Recovery, classify, split_batch
from llmc_cli.engine.stability import AdaptiveClipper, DivergenceGuard, EarlyStopping, PlateauLR, scale_lr
from llmc_cli.errors import DataError, DivergenceError, OutOfMemory


class Bus:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)


# ------------------------------------------------------------------------------ faults
def test_fault_specs_parse_steps_ranges_and_actions():
    parsed = faults.parse("oom@step=12, nan@30-32:every,checkpoint.write@4:enospc,spike")
    assert [(f.name, f.first, f.last, f.action) for f in parsed] == [
        ("oom", 12, None, "once"),
        ("nan", 30, 32, "every"),
        ("checkpoint.write", 4, None, "enospc"),
        ("spike", None, None, "once"),
    ]
    for bad in ("bogus@3", "oom@step=x", "nan@3:kill", "checkpoint.write@2:once"):
        with pytest.raises(ValueError, match="LLMC_FAULTS"):
            faults.parse(bad)


def test_training_faults_fire_once_per_step_unless_every():
    once = faults.TrainingFaults(faults.parse("nan@2-3,spike@5:every,oom@7"))
    factors = [once.loss_factor(s) for s in (1, 2, 2, 3, 3)]
    assert [math.isnan(f) for f in factors] == [False, True, False, True, False]  # each step of the range once
    assert factors[0] == factors[2] == factors[4] == 1.0
    assert once.loss_factor(5) == once.loss_factor(5) == faults.SPIKE_FACTOR
    with pytest.raises(torch.OutOfMemoryError):
        once.in_step(7)
    once.in_step(7)  # a retry of the same step succeeds


def test_checkpoint_faults_raise_enospc(monkeypatch):
    monkeypatch.setenv("LLMC_FAULTS", "checkpoint.write@4:enospc")
    faults.hit("checkpoint.write", 3)
    with pytest.raises(OSError) as caught:
        faults.hit("checkpoint.write", 4)
    assert caught.value.errno == errno.ENOSPC


# ------------------------------------------------------------------------ classification
@pytest.mark.parametrize(
    "error,kind",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "oom-gpu"),
        (RuntimeError(faults.CPU_OOM_MESSAGE), "oom-cpu"),
        (MemoryError(), "oom-cpu"),
        (DivergenceError("x"), "divergence"),
        (faults.InjectedDataError("x"), "data"),
        (DataError("x"), "data"),
        (faults.InjectedError("x"), "other"),
        (KeyError("x"), "other"),
    ],
)
def test_classify(error, kind):
    assert classify(error) == kind


# ----------------------------------------------------------------------------- decisions
def test_oom_halves_then_checkpoints_then_gives_up_keeping_the_effective_batch():
    bus = Bus()
    recovery = Recovery(Budget(), bus, batch_size=4, grad_accum=2)
    first = recovery.on_oom(3, "oom-gpu", "e", rows=4, checkpointing=False, evaluating=False)
    second = recovery.on_oom(3, "oom-gpu", "e", rows=4, checkpointing=False, evaluating=False)
    third = recovery.on_oom(3, "oom-gpu", "e", rows=4, checkpointing=False, evaluating=False)
    assert [(p.split, p.gradient_checkpointing) for p in (first, second, third)] == [(2, False), (4, False), (4, True)]
    assert all(e.settings["micro_batch"] * e.settings["grad_accum"] == 8 for e in bus.events)
    with pytest.raises(OutOfMemory, match="micro-batch 1 with gradient checkpointing on"):
        recovery.on_oom(3, "oom-gpu", "e", rows=4, checkpointing=True, evaluating=False)


def test_eval_oom_never_touches_the_training_split():
    recovery = Recovery(Budget(), Bus(), batch_size=4, grad_accum=1)
    recovery.on_oom(0, "oom-cpu", "e", rows=4, checkpointing=False, evaluating=True)
    assert (recovery.state.split, recovery.state.eval_split) == (1, 2)


def test_nan_skips_then_rolls_back_and_budgets_are_bounded():
    recovery = Recovery(Budget(nan_tolerance=3, max_rollbacks=1), Bus(), 4, 1)
    assert [recovery.on_bad_step(s, "non-finite", math.nan, False) for s in (5, 6, 7)] == ["skip", "skip", "rollback"]
    assert recovery.state.lr_scale == 0.5
    recovery.on_good_step()
    with pytest.raises(DivergenceError, match="1 rollbacks did not help"):  # a new spike, budget spent
        recovery.on_bad_step(9, "spike", 40.0, False)
    skips = Recovery(Budget(max_skipped_batches=2), Bus(), 4, 1)
    skips.on_bad_step(1, "non-finite", math.nan, False)
    skips.on_good_step()
    skips.on_bad_step(2, "non-finite", math.nan, False)
    skips.on_good_step()
    with pytest.raises(DivergenceError, match="2 batches were skipped"):
        skips.on_bad_step(3, "non-finite", math.nan, False)


def test_a_spike_that_repeats_after_a_rollback_is_skipped():
    recovery = Recovery(Budget(), Bus(), 4, 1)
    assert recovery.on_bad_step(12, "spike", 50.0, False) == "rollback"
    assert recovery.on_bad_step(12, "spike", 50.0, False) == "skip"
    assert recovery.state.skipped_steps == [12] and recovery.state.rollbacks == 1


def test_split_batch_keeps_rows_targets_and_counts():
    batch = {
        "input_ids": torch.arange(15).reshape(5, 3),
        "labels": torch.tensor([[-100, 1, 2]] * 5),
        "n_tokens": 15,
        "n_examples": 7,
    }
    parts = split_batch(batch, 2)
    assert [p["input_ids"].shape[0] for p in parts] == [3, 2]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), batch["input_ids"])
    assert sum(p["n_tokens"] for p in parts) == 15 and sum(p["n_examples"] for p in parts) == 7
    assert split_batch(batch, 1) == [batch]


# ------------------------------------------------------------------------------ controls
def test_adaptive_clipper_uses_a_percentile_capped_by_max_norm():
    clipper = AdaptiveClipper(max_norm=1.0, min_history=20)
    for _ in range(19):
        clipper.record(0.1)
    assert clipper.threshold() == 1.0  # not enough history yet
    clipper.record(0.2)
    assert clipper.threshold() == 0.1  # the 95th percentile of 19 x 0.1 and one 0.2
    for value in range(100):
        clipper.record(5.0 + value)
    assert clipper.threshold() == 1.0 and len(clipper.norms) == 100
    clipper.record(math.nan)
    assert len(clipper.norms) == 100
    restored = AdaptiveClipper(1.0)
    restored.load_state_dict(json.loads(json.dumps(clipper.state_dict())))
    assert restored.threshold() == clipper.threshold()


def test_divergence_guard_flags_non_finite_and_spikes_but_not_noise():
    guard = DivergenceGuard()
    for i in range(30):
        loss = 2.0 - 0.02 * i + 0.05 * math.sin(i)
        assert guard.check(loss) is None
        guard.record(loss)
    assert guard.check(math.inf) == "non-finite"
    assert guard.check(15.0) == "spike"
    assert guard.check(2.5) is None  # higher than usual, not a spike


def test_plateau_lowers_lr_after_patience_with_cooldown_and_floor():
    plateau = PlateauLR(patience=2, factor=0.5, cooldown=1, floor=0.2)
    factors = [plateau.observe(loss) for loss in (3.0, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6, 2.7, 2.8, 2.9)]
    assert factors == [1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 0.5, 1.0, 1.0, 0.8, 1.0]
    assert plateau.scale == pytest.approx(0.2)
    again = PlateauLR()
    again.load_state_dict(json.loads(json.dumps(plateau.state_dict())))
    assert (again.scale, again.best) == (plateau.scale, plateau.best)


def test_early_stopping_counts_evals_without_improvement():
    early = EarlyStopping(enabled=True, patience=2, min_delta=0.01)
    assert [early.observe(s, v) for s, v in ((2, 3.0), (4, 2.5), (6, 2.495), (8, 2.6))] == [False, False, False, True]
    assert (early.best, early.best_step) == (2.5, 4)


def test_scale_lr_scales_now_and_every_later_step_of_the_schedule():
    from transformers import get_scheduler

    def schedule(factor_at):
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.AdamW([param], lr=1e-3)
        scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=20)
        seen = []
        for step in range(20):
            if step == factor_at:
                scale_lr(optimizer, scheduler, 0.5)
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen, scheduler

    reference, _ = schedule(factor_at=-1)
    halved, scheduler = schedule(factor_at=6)
    assert halved[:6] == reference[:6]
    assert halved[6:] == pytest.approx([lr / 2 for lr in reference[6:]], rel=1e-12)
    assert scheduler.state_dict()["base_lrs"] == [5e-4]  # saved with the checkpoint


# -------------------------------------------------------------------------------- report
def test_failure_report_has_cause_metrics_actions_checkpoint_and_fixes(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"type": "train", "step": 7, "loss": 2.5, "lr": 1e-4})
        + "\n"
        + json.dumps({"type": "eval", "step": 5, "eval_loss": 2.7})
        + "\n"
    )
    action = Adjustment(step=7, cause="non-finite", action="skipped-batch", message="skipped step 7")
    (tmp_path / "events.jsonl").write_text(json.dumps(action.to_dict()) + "\n")
    text = write_failure_report(tmp_path, DivergenceError("The loss diverged.", hint="Lower --lr."))
    report = json.loads((tmp_path / "failure.json").read_text())
    assert report["cause"] == "divergence" and report["exit_code"] == 7 and report["last_step"] == 7
    assert report["last_train"] == {"loss": 2.5, "lr": 1e-4} and report["last_eval"] == {"eval_loss": 2.7}
    assert report["actions"][0]["action"] == "skipped-batch" and report["checkpoint"] is None
    assert text.read_text() == render(report)
    assert "step 7: skipped step 7" in text.read_text() and "Lower the learning rate" in text.read_text()


def test_stability_advice_acts_on_oscillation_and_exploding_gradients_with_a_cooldown():
    from llmc_cli.engine.events import TrainingWarning
    from llmc_cli.engine.stability import StabilityAdvice

    advice = StabilityAdvice(cooldown=50)
    advice(TrainingWarning("plateau", "flat"))
    assert advice.take(10) is None
    advice(TrainingWarning("lr_too_high", "oscillates"))
    assert advice.take(11).code == "lr_too_high"
    advice(TrainingWarning("exploding_gradients", "big"))
    assert advice.take(30) is None  # within the cooldown: dropped
    advice(TrainingWarning("exploding_gradients", "big"))
    assert advice.take(61).code == "exploding_gradients"
    plateau = PlateauLR(factor=0.5, floor=0.3)
    assert [plateau.reduce(), plateau.reduce(), plateau.reduce()] == [0.5, pytest.approx(0.6), 1.0]
