"""A study as a report: every trial (Optuna's state names), the best, and what mattered."""

from __future__ import annotations

from typing import Any


def describe(study) -> dict[str, Any]:
    """The study as JSON: every trial (Optuna's state names) and the best."""
    trials = []
    for t in study.trials:
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        trials.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "duration_s": duration,
                "steps_reported": len(t.intermediate_values),
                "tokens": t.user_attrs.get("tokens"),
                "rss_after_mb": t.user_attrs.get("rss_after_mb"),  # this worker's RSS once the trial was freed
                "failure": t.user_attrs.get("failure"),
                "run_dir": t.user_attrs.get("run_dir"),
            }
        )
    complete = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    best = min(complete, key=lambda t: t["value"]) if complete else None
    return {
        "study": study.study_name,
        "space": study.user_attrs.get("space"),
        "trials": trials,
        "best": best,
        "importances": importances(study),
    }


def importances(study) -> dict[str, float] | None:
    """Each searched parameter's importance to reaching the best eval losses, normalised to sum to 1:
    Optuna's PED-ANOVA (deterministic, no scikit-learn; fANOVA would need it), over the trials in the
    best fifth, or best two when fewer than ten. None with fewer than 3 complete trials."""
    import warnings

    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3:
        return None
    evaluator = PedAnovaImportanceEvaluator(target_quantile=max(0.2, 2 / len(complete)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)
            found = get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError):  # e.g. a parameter that never varied
        return None
    return {key: round(value, 4) for key, value in found.items()}
