"""Pure logic of recovery and the training controls: fault specs, classification, decisions, controls."""

import errno
import json
import math

import pytest
import torch

from llmc_cli import faults
from llmc_cli.engine.controls import AdaptiveClipper, DivergenceGuard, EarlyStopping, InstabilityLR, PlateauLR
from llmc_cli.engine.failure import Standing, render, write_failure_report
from llmc_cli.engine.journal import Journal
from llmc_cli.engine.lr import LearningRate
from llmc_cli.engine.recovery import Budget, Recovery, classify, recoverable, rollback_lr_factor, split_batch
from llmc_cli.errors import DataError, DivergenceError, OutOfMemory, UnreadableBatch


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
    once = faults.Faults(faults.parse("nan@2-3,spike@5:every,oom@7,grad-spike@9"))
    factors = [once.loss_factor(s) for s in (1, 2, 2, 3, 3)]
    assert [math.isnan(f) for f in factors] == [False, True, False, True, False]  # each step of the range once
    assert factors[0] == factors[2] == factors[4] == 1.0
    assert once.loss_factor(5) == once.loss_factor(5) == faults.SPIKE_FACTOR
    with pytest.raises(torch.OutOfMemoryError):
        once.in_step(7)
    once.in_step(7)  # a retry of the same step succeeds
    assert [once.gradient_factor(s) for s in (8, 9, 9)] == [1.0, faults.GRAD_SPIKE_FACTOR, 1.0]
    assert not faults.NO_FAULTS and faults.NO_FAULTS.loss_factor(2) == 1.0


def test_checkpoint_faults_raise_enospc_and_a_bad_spec_is_a_config_error(monkeypatch):
    from llmc_cli.errors import ConfigError

    monkeypatch.setenv("LLMC_FAULTS", "checkpoint.write@4:enospc")
    injected = faults.Faults.from_env()
    injected.at_checkpoint("checkpoint.write", 3)
    for _ in range(2):  # every time the save reaches that point
        with pytest.raises(OSError) as caught:
            injected.at_checkpoint("checkpoint.write", 4)
        assert caught.value.errno == errno.ENOSPC
    monkeypatch.setenv("LLMC_FAULTS", "nan@x")
    with pytest.raises(ConfigError, match="LLMC_FAULTS"):
        faults.Faults.from_env()


# ------------------------------------------------------------------------ classification
@pytest.mark.parametrize(
    "error,kind",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "oom-gpu"),
        (RuntimeError(faults.CPU_OOM_MESSAGE), "oom-cpu"),
        (MemoryError(), "oom-cpu"),
        (DivergenceError("x"), "divergence"),
        (UnreadableBatch("x"), "data"),
        (DataError("x"), "data"),
        (faults.InjectedError("x"), "other"),
        (KeyError("x"), "other"),
    ],
)
def test_classify(error, kind):
    assert classify(error) == kind


def test_only_memory_and_unusable_batches_are_recoverable_inside_a_step():
    assert recoverable(torch.OutOfMemoryError("CUDA out of memory")) == "oom-gpu"
    assert recoverable(RuntimeError(faults.CPU_OOM_MESSAGE)) == "oom-cpu"
    assert recoverable(UnreadableBatch("x")) == "data"
    assert recoverable(DataError("x")) is None  # bad data found by validation is not skipped
    assert recoverable(OutOfMemory("x")) is None  # recovery already gave up
    assert recoverable(KeyError("x")) is None


# ----------------------------------------------------------------------------- decisions
def test_oom_halves_then_checkpoints_then_gives_up_keeping_the_effective_batch():
    bus = Bus()
    recovery = Recovery(Budget(), Journal(bus), batch_size=4, grad_accum=2)
    first = recovery.on_oom(3, "oom-gpu", "e", rows=4, checkpointing=False, evaluating=False)
    second = recovery.on_oom(3, "oom-gpu", "e", rows=4, checkpointing=False, evaluating=False)
    third = recovery.on_oom(3, "oom-gpu", "e", rows=4, checkpointing=False, evaluating=False)
    assert [(p.split, p.gradient_checkpointing) for p in (first, second, third)] == [(2, False), (4, False), (4, True)]
    assert all(e.settings["micro_batch"] * e.settings["grad_accum"] == 8 for e in bus.events)
    with pytest.raises(OutOfMemory, match="micro-batch 1 with gradient checkpointing on"):
        recovery.on_oom(3, "oom-gpu", "e", rows=4, checkpointing=True, evaluating=False)


def test_eval_oom_never_touches_the_training_split():
    recovery = Recovery(Budget(), Journal(Bus()), batch_size=4, grad_accum=1)
    recovery.on_oom(0, "oom-cpu", "e", rows=4, checkpointing=False, evaluating=True)
    assert (recovery.state.split, recovery.state.eval_split) == (1, 2)


def test_nan_skips_then_rolls_back_and_budgets_are_bounded():
    recovery = Recovery(Budget(nan_tolerance=3, max_rollbacks=1), Journal(Bus()), 4, 1)
    assert [recovery.on_bad_step(s, "non-finite", math.nan, False) for s in (5, 6, 7)] == ["skip", "skip", "rollback"]
    assert recovery.state.rollbacks == 1
    recovery.on_good_step()
    with pytest.raises(DivergenceError, match="1 rollbacks did not help"):  # a new spike, budget spent
        recovery.on_bad_step(9, "spike", 40.0, False)
    skips = Recovery(Budget(max_skipped_batches=2), Journal(Bus()), 4, 1)
    skips.on_bad_step(1, "non-finite", math.nan, False)
    skips.on_good_step()
    skips.on_bad_step(2, "non-finite", math.nan, False)
    skips.on_good_step()
    with pytest.raises(DivergenceError, match="2 batches were skipped"):
        skips.on_bad_step(3, "non-finite", math.nan, False)


def test_a_spike_that_repeats_after_a_rollback_is_skipped():
    recovery = Recovery(Budget(), Journal(Bus()), 4, 1)
    assert recovery.on_bad_step(12, "spike", 50.0, False) == "rollback"
    assert recovery.on_bad_step(12, "spike", 50.0, False) == "skip"
    assert recovery.state.skipped_steps == [12] and recovery.state.rollbacks == 1


def test_far_from_the_start_skips_once_then_rolls_back_with_a_quarter_of_the_lr():
    recovery = Recovery(Budget(), Journal(Bus()), 4, 1)
    assert recovery.on_bad_step(3, "diverged", 8.25, False) == "skip"  # one odd batch is allowed
    assert recovery.on_bad_step(4, "diverged", 15.8, False) == "rollback"
    assert recovery.on_bad_step(8, "eval-diverged", 11.3, False) == "rollback"  # an eval cannot be skipped
    assert (rollback_lr_factor("diverged"), rollback_lr_factor("eval-diverged")) == (0.25, 0.25)
    assert (rollback_lr_factor("spike"), rollback_lr_factor("non-finite")) == (0.5, 0.5)


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
        assert guard.check(loss, 0.5) is None
        guard.record(loss, 0.5)
    assert guard.check(math.inf, 0.5) == "non-finite"
    assert guard.check(2.0, math.nan) == "non-finite"  # a finite loss with a broken gradient
    assert guard.check(15.0, 0.5) == "spike"
    assert guard.check(2.5, 0.5) is None  # higher than usual, not a spike


def test_divergence_guard_judges_the_first_steps_against_the_start():
    """The real blow-up of issue 13 (SmolLM2, LR 100x too high): train loss 1.03 -> 2.69 -> 8.25
    -> 15.8, eval 1.49 -> 11.3. The recent window is empty then; the start is not."""
    guard = DivergenceGuard()
    guard.set_start_eval(1.49)
    assert guard.check(3.5, 1.1) is None  # the first step is the base model: nothing to judge yet
    guard.record(1.03, 1.1)
    assert guard.start_loss == 1.49 and guard.start_norm == 1.1
    assert guard.check(2.69, 3.0) is None  # worse, not yet far: 2x and 1 nat above the start
    assert guard.check(8.25, 20.0) == "diverged"
    assert guard.check(1.2, 200.0) == "diverged"  # a gradient norm 100x the first step's
    assert not guard.eval_diverged(1.9) and guard.eval_diverged(11.3) and guard.eval_diverged(math.nan)
    restored = DivergenceGuard()
    restored.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert restored.check(8.25, 20.0) == "diverged" and restored.eval_diverged(11.3)


def test_divergence_guard_takes_a_harder_first_batch_as_the_start():
    """Train data harder than the validation rows must not read as divergence."""
    guard = DivergenceGuard()
    guard.set_start_eval(1.0)
    guard.record(4.0, 1.0)  # the base model's loss on the first training batch
    assert guard.start_loss == 4.0
    assert guard.check(4.5, 1.0) is None and guard.check(8.5, 1.0) == "diverged"
    fresh = DivergenceGuard()  # a random-init model starts near ln(vocab): no false alarm as it learns
    fresh.set_start_eval(10.4)
    fresh.record(10.4, 2.0)
    assert all(fresh.check(loss, 2.0) is None for loss in (10.5, 9.0, 6.0, 3.0))


def test_plateau_asks_for_a_lower_lr_after_patience_with_cooldown():
    plateau = PlateauLR(patience=2, cooldown=1)
    asks = [plateau.observe(loss) for loss in (3.0, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6, 1.0, 1.1)]
    assert asks == [False, False, False, True, False, False, True, False, False, False]
    again = PlateauLR()
    again.load_state_dict(json.loads(json.dumps(plateau.state_dict())))
    assert (again.best, again.bad_evals, again.cooling) == (plateau.best, plateau.bad_evals, plateau.cooling)
    assert not any(PlateauLR(enabled=False, patience=1).observe(v) for v in (3.0, 3.0, 3.0))


def test_early_stopping_counts_evals_without_improvement():
    early = EarlyStopping(enabled=True, patience=2, min_delta=0.01)
    assert [early.observe(s, v) for s, v in ((2, 3.0), (4, 2.5), (6, 2.495), (8, 2.6))] == [False, False, False, True]
    assert (early.best, early.best_step) == (2.5, 4)


def _schedule(lower_at: dict[int, tuple[str, float]], floor: float = 0.05):
    """The LR of each of 20 steps of a real transformers cosine schedule, lowered at the given steps."""
    from transformers import get_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=20)
    lr = LearningRate(optimizer, scheduler, floor=floor)
    seen = []
    for step in range(20):
        if step in lower_at:
            lr.lower(*lower_at[step])
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        lr.step()
    return seen, lr


def test_lowering_the_lr_scales_now_and_every_later_step_and_leaves_the_schedule_pure():
    reference, _ = _schedule({})
    halved, lr = _schedule({6: ("plateau", 0.5)})
    assert halved[:6] == reference[:6]
    assert halved[6:] == [value / 2 for value in reference[6:]]  # exact: x0.5 is exact in floating point
    assert lr.scheduler.state_dict()["base_lrs"] == [1e-3]  # the planned schedule is untouched
    assert lr.state_dict() == {"plateau": 0.5, "instability": 1.0, "rollback": 1.0}  # saved in checkpoints


def test_the_controls_stop_at_the_floor_but_rollbacks_do_not():
    _, lr = _schedule({2: ("plateau", 0.5), 3: ("instability", 0.5), 4: ("plateau", 0.5), 5: ("rollback", 0.5)}, 0.2)
    assert lr.factors["plateau"] * lr.factors["instability"] == pytest.approx(0.2)  # 0.125 was refused: floor 0.2
    assert lr.multiplier == pytest.approx(0.1)
    assert lr.lower("plateau", 0.5) == 1.0 and lr.multiplier == pytest.approx(0.1)  # at the floor: no change


def test_lr_state_round_trips_and_a_rollback_keeps_its_own_reduction():
    _, lr = _schedule({3: ("plateau", 0.5), 8: ("rollback", 0.5)})
    saved = {"plateau": 1.0, "instability": 1.0, "rollback": 1.0}  # a checkpoint from before both
    lr.load_state_dict(saved, keep=("rollback",))
    assert lr.multiplier == 0.5 and lr.current == lr.scheduler.get_last_lr()[0] * 0.5
    lr.load_state_dict(saved)
    assert lr.multiplier == 1.0 and lr.current == lr.scheduler.get_last_lr()[0]


def test_instability_lowers_the_lr_on_exploding_gradients_and_oscillation_with_a_cooldown():
    control = InstabilityLR(cooldown=50)
    assert [control.observe(s, 2.0 - 0.01 * s, 0.5) for s in range(1, 21)] == [None] * 20
    code, evidence = control.observe(21, 1.8, 80.0)
    assert code == "exploding_gradients" and evidence["median"] == 0.5
    assert control.observe(40, 1.8, 500.0) is None  # within the cooldown
    restored = InstabilityLR()
    restored.load_state_dict(json.loads(json.dumps(control.state_dict())))  # the checkpoint decides the same
    decided = control.observe(71, 1.7, 900.0)
    assert decided is not None and restored.observe(71, 1.7, 900.0) == decided
    zigzag = InstabilityLR(cooldown=50)
    found = [zigzag.observe(s, 4.0 + (-0.8 if s % 2 else 0.8), 0.5) for s in range(1, 51)]  # zig-zag, not falling
    assert found[:-1] == [None] * 49 and found[-1][0] == "lr_too_high"
    assert InstabilityLR(enabled=False).observe(1, 1.0, 1.0) is None


# -------------------------------------------------------------------------------- report
def test_failure_report_has_cause_metrics_actions_checkpoint_and_fixes(tmp_path):
    action = {"step": 7, "cause": "non-finite", "action": "skipped-batch", "message": "skipped step 7", "settings": {}}
    standing = Standing(
        step=7,
        last_train={"event": "StepEnded", "step": 7, "loss": 2.5, "lr": 1e-4, "examples": 8},
        last_eval={"event": "EvalEnded", "step": 5, "eval_loss": 2.7},
        actions=[action],
    )
    text = write_failure_report(tmp_path, DivergenceError("The loss diverged.", hint="Lower --lr."), standing)
    report = json.loads((tmp_path / "failure.json").read_text())
    assert report["cause"] == "divergence" and report["exit_code"] == 7 and report["last_step"] == 7
    assert report["last_train"] == {"loss": 2.5, "lr": 1e-4} and report["last_eval"] == {"eval_loss": 2.7}
    assert report["actions"] == [action] and report["checkpoint"] is None
    assert text.read_text() == render(report)
    assert "step 7: skipped step 7" in text.read_text() and "Lower the learning rate" in text.read_text()
    assert not list(tmp_path.glob("*.tmp"))  # written through the durable path


def test_release_memory_hands_freed_heap_pages_back_to_the_system():
    # 3,000 tensors of 64 KB sit in malloc's heap (below its mmap threshold): freeing them
    # alone leaves the RSS where it was; release_memory (malloc_trim) returns the pages.
    import psutil

    from llmc_cli.engine.recovery import free_memory, release_memory

    rss = lambda: psutil.Process().memory_info().rss  # noqa: E731
    held = [torch.ones(16_000) for _ in range(3000)]
    with_tensors = rss()
    del held
    free_memory()
    assert release_memory() is True
    assert rss() < with_tensors - 100 * 2**20
