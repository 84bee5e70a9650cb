"""``llmc tune``'s engine on the tiny model: trial 0 is the resolved config, a grid covers exactly
its points, pruning stops a bad trial early, a failed trial does not end the study, and an
interrupted study continues its trial count."""

from __future__ import annotations

import json
import os
import signal

import pytest

from llmc_cli.errors import RunInterrupted
from llmc_cli.events import StepEnded
from llmc_cli.faults import Faults, parse
from llmc_cli.tune.report import describe
from llmc_cli.tune.space import Dimension, Space
from llmc_cli.tune.study import TrialRun, TuneSettings, finished, open_study, run_study

OPTS = dict(limit=60, max_length=128, eval_every=1, checkpoint_interval=1000, lora_dropout=0.0)


def trial_run(tiny_model_dir, gsm8k_train, **extra) -> TrialRun:
    return TrialRun(gsm8k_train, str(tiny_model_dir), "highspeed", {**OPTS, **extra})


def test_the_first_trial_is_the_resolved_config_and_random_trials_stay_in_bounds(tmp_path, tiny_model_dir, gsm8k_train):
    space = Space((Dimension("lr", 1e-4, 3e-3, log=True), Dimension("lora_r", choices=(4, 8))))
    settings = TuneSettings(trials=3, method="random", pruner="none", budget_steps=2)
    study = open_study(tmp_path / "s", "s", None, settings, space)
    run_study(study, tmp_path / "s", space, trial_run(tiny_model_dir, gsm8k_train), settings)

    report = describe(study)
    assert [t["state"] for t in report["trials"]] == ["COMPLETE"] * 3
    first = report["trials"][0]["params"]
    assert first["lora_r"] == 8 and first["lr"] == pytest.approx(1e-3)  # highspeed's small bucket, rank 8
    for trial in report["trials"]:
        assert 1e-4 <= trial["params"]["lr"] <= 3e-3 and trial["params"]["lora_r"] in (4, 8)
        assert trial["steps_reported"] == 2 and trial["tokens"] > 0
    assert report["best"]["value"] == min(t["value"] for t in report["trials"])
    for trial in report["trials"]:  # alpha followed the rank: the preset's alpha / r (16 / 8) kept
        lora = json.loads((tmp_path / "s" / "trials" / f"trial-{trial['number']}" / "config.json").read_text())
        assert lora["config"]["lora"]["lora_alpha"] == 2 * trial["params"]["lora_r"]


def test_a_grid_covers_exactly_its_points_and_a_failed_trial_does_not_end_the_study(
    tmp_path, tiny_model_dir, gsm8k_train
):
    space = Space((Dimension("lr", choices=(1e-3, 3e-3)), Dimension("lora_r", choices=(4, 8))))
    settings = TuneSettings(trials=10, method="grid", pruner="none", budget_steps=2)
    study = open_study(tmp_path / "g", "g", None, settings, space)
    # The first trial fails as a bug in training would (the fault fires once per process).
    run = trial_run(tiny_model_dir, gsm8k_train, faults=Faults(parse("error@step=1")), auto_recovery=False)
    run_study(study, tmp_path / "g", space, run, settings)

    trials = describe(study)["trials"]
    states = [t["state"] for t in trials]
    assert states[0] == "FAIL" and "injected" in trials[0]["failure"].lower()
    assert states[1:] == ["COMPLETE"] * 3 and finished(study) == 4  # the grid's 4 points, then it stopped
    assert sorted((t["params"]["lr"], t["params"]["lora_r"]) for t in trials) == [
        (1e-3, 4), (1e-3, 8), (3e-3, 4), (3e-3, 8)
    ]  # fmt: skip


def test_pruning_stops_a_bad_trial_early_and_an_interrupted_study_goes_on_where_it_was(
    tmp_path, tiny_model_dir, gsm8k_train, monkeypatch
):
    import gc

    from llmc_cli.engine import recovery

    alive, release = [], recovery.release_memory  # models reachable when a trial's memory is handed back

    def release_and_count():
        gc.collect()
        alive.append(sum(1 for o in gc.get_objects() if type(o).__name__ == "PeftModelForCausalLM"))
        release()

    monkeypatch.setattr(recovery, "release_memory", release_and_count)
    space = Space((Dimension("lr", choices=(3e-3, 2e-3, 1e-7)),))
    settings = TuneSettings(trials=4, method="random", pruner="median", budget_steps=4)
    study = open_study(tmp_path / "p", "p", None, settings, space)
    for lr in (3e-3, 2e-3, 1e-7, 3e-3):  # the third barely learns: worse than the median of the first two
        study.enqueue_trial({"lr": lr})

    def interrupt_trial_3(trial):
        def on_event(event):
            if trial.number == 3 and isinstance(event, StepEnded) and event.step == 1:
                os.kill(os.getpid(), signal.SIGINT)

        return on_event

    run = trial_run(tiny_model_dir, gsm8k_train)
    with pytest.raises(RunInterrupted):
        run_study(study, tmp_path / "p", space, run, settings, subscribe=interrupt_trial_3)
    trials = describe(study)["trials"]
    assert [t["state"] for t in trials[:3]] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert trials[2]["steps_reported"] < 4  # stopped before its budget
    assert finished(study) == 3  # the interrupted trial does not count

    run_study(study, tmp_path / "p", space, run, settings)  # `llmc tune --study p` again
    trials = describe(study)["trials"]
    assert finished(study) == 4 and trials[-1]["state"] == "COMPLETE"
    assert trials[-1]["params"] == trials[3]["params"]  # the interrupted trial ran again
    assert alive == [0] * 5  # complete, pruned and interrupted trials alike
