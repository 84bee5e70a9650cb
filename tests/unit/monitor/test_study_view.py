"""The study view of ``llmc tune``: counts read from the study, the trial in flight with its curve
and evaluations against the best trial's, ETA, and each finished trial printed above the view."""

from __future__ import annotations

import io
import re
from datetime import datetime, timedelta

import optuna
from rich.console import Console

from llmc_cli.events import EvalEnded, StepEnded
from llmc_cli.monitor.study_view import StudyView, study_counts

LR = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}


def trial(state, params, value=None, curve=None, seconds=None) -> optuna.trial.FrozenTrial:
    start = datetime(2026, 1, 1)
    return optuna.trial.FrozenTrial(
        number=0, trial_id=0, state=state, value=value, params=params, distributions={k: LR["lr"] for k in params},
        datetime_start=start, datetime_complete=start + timedelta(seconds=seconds) if seconds else None,
        user_attrs={}, system_attrs={}, intermediate_values=curve or {},
    )  # fmt: skip


def a_study() -> optuna.Study:
    study = optuna.create_study(study_name="s")
    done = optuna.trial.TrialState.COMPLETE
    study.add_trial(trial(done, {"lr": 1e-3}, 1.5, {10: 1.7, 20: 1.5}, 100))
    study.add_trial(trial(done, {"lr": 2e-3}, 1.2, {10: 1.4, 20: 1.2}, 80))
    study.add_trial(trial(optuna.trial.TrialState.PRUNED, {"lr": 1e-5}, curve={10: 2.0}, seconds=30))
    study.add_trial(trial(optuna.trial.TrialState.FAIL, {"lr": 1e-2}, seconds=70))
    return study


def step(n: int, loss: float) -> StepEnded:
    return StepEnded(n, 20, 0.1 * n, loss, 1e-3, 0.5, 500, 400, 4, 900.0, 3.5, 2.0 * n, 40.0 - 2 * n)


def test_the_view_shows_the_study_and_the_trial_in_flight_against_the_best():
    counts = study_counts(a_study(), finished=4)
    assert (counts.complete, counts.pruned, counts.failed, counts.best_number) == (2, 1, 1, 1)
    assert counts.best_curve == {10: 1.4, 20: 1.2} and counts.mean_duration_s == 70.0  # (100 + 80 + 30 + 70) / 4

    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    view = StudyView(console, "tune-7", trials=10, counts=counts)
    on_event = view.trial_started(4, {"lr": 3.2e-4, "lora_r": 16})
    for n, loss in ((1, 2.0), (2, 1.8), (3, 1.6)):
        on_event(step(n, loss))
    on_event(EvalEnded(10, 1.55, 4.7, 1000, 1.0))
    console.print(view.render())
    text = out.getvalue()
    assert "study tune-7" in text and "trial 5/10" in text
    assert "complete 2  pruned 1  failed 1" in text and "best so far 1.2000 (trial 1)" in text
    assert "lr 0.00032  lora_r 16" in text and "step 3/20" in text and "train loss 1.6000" in text
    assert "eval @10: 1.5500  (best trial 1.4000)" in text  # what the pruner weighs it against
    assert re.search(r"ETA 0:0(6:5\d|7:00)", text)  # 6 more trials at 70 s each, this one just started: 420 s

    view.trial_ended("trial 4: pruned after 1 evaluations", study_counts(a_study(), finished=5))
    out.truncate(0)
    console.print(view.render())
    assert "between trials" in out.getvalue() and "trial 5/10" in out.getvalue()
