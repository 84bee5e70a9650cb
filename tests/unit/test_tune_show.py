"""``llmc tune show`` on a study made here (no training): the table, importances (the same figures
each time), the history plot, and best.toml that ``llmc train --config`` can read."""

from __future__ import annotations

import io

import optuna
import pytest
from rich.console import Console

from llmc_cli.cli.tune import _print
from llmc_cli.config.layers import resolve, toml_layer
from llmc_cli.errors import ConfigError
from llmc_cli.tune.best import best_of
from llmc_cli.tune.report import describe, importances


def study_with_trials() -> optuna.Study:
    study = optuna.create_study(study_name="made")
    space = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
             "lora_r": optuna.distributions.CategoricalDistribution([4, 8, 16])}  # fmt: skip
    for lr, rank in [(1e-3, 8), (3e-3, 8), (1e-4, 16), (2e-3, 4), (5e-4, 16)]:
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr, "lora_r": rank}, distributions=space, value=2.0 - 100 * lr,  # only lr matters
                user_attrs={"tokens": 1000, "values": {"lr": lr, "lora_r": rank, "lora_alpha": 2.0 * rank}},
            )
        )  # fmt: skip
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-5}, distributions={"lr": space["lr"]},
                                              state=optuna.trial.TrialState.PRUNED))  # fmt: skip
    return study


def test_show_prints_the_trials_what_mattered_the_history_and_writes_the_best(tmp_path):
    study = study_with_trials()
    first, second = importances(study), importances(study)
    assert first == second and max(first, key=first.get) == "lr"  # deterministic

    report = describe(study)
    assert [t["state"] for t in report["trials"]] == ["COMPLETE"] * 5 + ["PRUNED"]
    assert report["best"]["params"] == {"lr": 3e-3, "lora_r": 8}

    out = io.StringIO()
    _print(Console(file=out, width=100), study, tmp_path)
    text = out.getvalue()
    assert "What mattered" in text and "optimisation history" in text and "PRUNED" in text
    assert "Best: trial 1" in text

    best = resolve([toml_layer(tmp_path / "best.toml")]).config
    assert (best.training.lr, best.lora.lora_r, best.lora.lora_alpha) == (3e-3, 8, 16)  # the derived alpha too


def test_the_best_of_a_study_without_a_complete_trial_is_a_clear_error():
    study = optuna.create_study(study_name="early")
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-5}, state=optuna.trial.TrialState.PRUNED,
                    distributions={"lr": optuna.distributions.FloatDistribution(1e-6, 1e-2)}))  # fmt: skip
    with pytest.raises(ConfigError, match="early has no complete trial") as error:
        best_of(study)
    assert "llmc tune --study early" in error.value.hint
