"""A study: Optuna's sampler and pruner over llmc runs, kept in Optuna's own storage.

A study lives in a folder under the output (``runs/tune-N``, or ``--study NAME``): its Optuna
journal (``journal.log``: Optuna's file storage, so several ``llmc tune --study NAME``
processes on one machine or a shared filesystem work on one study) unless ``--storage`` names
an Optuna RDB URL, and one llmc run per trial under ``trials/``. Each trial trains in this
process through the public API (:class:`~llmc_cli.FineTuner`); the data is tokenised by the
first trial and read from the data cache by the others. Evaluations go to ``trial.report`` and
the pruner; a pruned trial stops at the next step boundary (the engine's ``StopRequest``).
Trial 0 is the resolved config itself (preset and data rules), so the study's best is never
worse than what ``llmc train`` would have run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmc_cli.errors import ConfigError, RunInterrupted, TrainingError
from llmc_cli.tune.space import Space
from llmc_cli.tune.workers import pending_reruns, reap_stale, worker_identity

Method = Literal["tpe", "random", "grid"]
Pruner = Literal["median", "hyperband", "halving", "none"]
JOURNAL = "journal.log"
EVALUATIONS = 4  # per trial with a step budget, for the pruner (unless eval_every is set)
# Trial states that count towards --trials (an interrupted trial does not: it runs again).
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass(frozen=True)
class TuneSettings:
    """How a study searches: ``trials`` in all (across workers and resumes), ``budget_steps``
    optimizer steps per trial (None: the run's own plan)."""

    trials: int = 10
    method: Method = "tpe"
    pruner: Pruner = "median"
    budget_steps: int | None = None
    timeout_s: float | None = None
    seed: int = 42


@dataclass
class TrialRun:
    """What a trial needs to start a run: the FineTuner arguments every trial shares."""

    data: Path
    model: str | None
    preset: str | None
    overrides: dict[str, Any] = field(default_factory=dict)
    config_file: Path | None = None


def study_folder(output: Path, name: str | None) -> tuple[Path, str]:
    """The study's folder and name: ``output/NAME``, or the next free ``output/tune-N``."""
    if name is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ConfigError(f"Study name '{name}' is not a plain folder name.", hint="Use letters, digits, . _ -")
        return output / name, name
    taken = [int(m.group(1)) for p in output.glob("tune-*") if (m := re.fullmatch(r"tune-(\d+)", p.name))]
    number = max(taken, default=0) + 1
    return output / f"tune-{number}", f"tune-{number}"


def open_study(folder: Path, name: str, storage: str | None, settings: TuneSettings, space: Space | None = None):
    """Create or load the study (a new one records its space and settings as user attributes)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # llmc reports trials itself (a failure: one line)
    folder.mkdir(parents=True, exist_ok=True)
    backend = _rdb(storage) if storage else _journal(folder)
    study = optuna.create_study(
        storage=backend,
        study_name=name,
        direction="minimize",
        sampler=_sampler(settings, space),
        pruner=_pruner(settings.pruner),
        load_if_exists=True,
    )
    if space is not None and "space" not in study.user_attrs:
        study.set_user_attr("space", {d.key: d.describe() for d in space.dimensions})
        study.set_user_attr("settings", {k: v for k, v in settings.__dict__.items()})
    return study


def load_study(folder: Path, name: str, storage: str | None):
    """An existing study, read-only use (``llmc tune show``)."""
    import optuna

    if storage is None and not (folder / JOURNAL).is_file():
        raise ConfigError(f"No study at {folder} (no {JOURNAL}).", hint="Check the name and --output.")
    try:
        return optuna.load_study(study_name=name, storage=_rdb(storage) if storage else _journal(folder))
    except KeyError:
        raise ConfigError(f"The storage has no study named '{name}'.", hint="Check --study and --storage.") from None


HEARTBEAT_S, GRACE_S = 60, 180


def _rdb(url: str):
    """An Optuna RDB storage with a heartbeat: a trial whose worker stops beating for ``GRACE_S`` is
    failed by the next worker and queued again (Optuna's RetryHeartbeatStaleTrialCallback)."""
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
    except Exception as exc:  # sqlalchemy's errors: a bad URL, a missing driver, an unreachable server
        raise ConfigError(
            f"Cannot open the study storage {url}: {type(exc).__name__}: {exc}.",
            hint="Check --storage: an SQLAlchemy URL such as sqlite:///study.db or postgresql://user@host/db.",
        ) from None


def _journal(folder: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(folder / JOURNAL)))


def _sampler(settings: TuneSettings, space: Space | None):
    import optuna

    if settings.method == "grid":
        if space is None:
            return None
        return optuna.samplers.GridSampler(space.grid(), seed=settings.seed)
    if settings.method == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    return optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=min(5, max(1, settings.trials // 3)))


def _pruner(kind: Pruner):
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def finished(study) -> int:
    """Trials that count towards ``--trials``: complete, pruned or failed, not interrupted nor stale."""
    return sum(
        1
        for t in study.trials
        if t.state.name in FINISHED and not t.user_attrs.get("interrupted") and not t.user_attrs.get("stale")
    )


def run_study(
    study, folder: Path, space: Space, run: TrialRun, settings: TuneSettings, subscribe=None, ended=None
) -> None:
    """Run trials until the study has ``settings.trials`` finished ones (or the timeout, or the grid ends).

    ``subscribe(trial)`` (an Optuna trial, its parameters suggested) may return an event subscriber
    for that trial's run (the study view);
    ``ended(frozen_trial)`` is called as each trial ends.

    Raises:
        RunInterrupted: Ctrl-C / SIGTERM; the trial in flight is re-queued for the next ``llmc tune``.
    """
    seed_study(study, space, run, settings)
    reap_stale(study)

    def report(study, trial) -> None:
        if ended is not None:
            ended(trial)

    def enough(study, trial) -> None:
        report(study, trial)
        if finished(study) >= settings.trials:
            study.stop()

    objective = None
    if finished(study) < settings.trials:
        objective = _Objective(folder, space, run, settings, subscribe)
        study.optimize(objective, timeout=settings.timeout_s, callbacks=[enough], catch=(TrainingError,))
    # A worker that died while this one ran its last trials: its trial runs here, past --trials if need be.
    reap_stale(study)
    while pending := pending_reruns(study):
        objective = objective or _Objective(folder, space, run, settings, subscribe)
        study.optimize(objective, n_trials=len(pending), callbacks=[report], catch=(TrainingError,))
        reap_stale(study)


def seed_study(study, space: Space, run: TrialRun, settings: TuneSettings) -> None:
    """Queue trial 0 in a new study: the config ``llmc train`` would run, for every searched key the
    space holds (a grid visits every point anyway). Call it before starting other workers."""
    if study.trials or settings.method == "grid":
        return
    start = space.start(resolved_config(run, settings))
    study.enqueue_trial(start, user_attrs={"start": "the resolved config (preset and data rules)"})


def resolved_config(run: TrialRun, settings: TuneSettings):
    """The config ``llmc train`` would run with the study's budget (preset and data rules applied)."""
    from llmc_cli import FineTuner

    budget = {"max_steps": settings.budget_steps} if settings.budget_steps else {}
    overrides = {**run.overrides, **budget}
    tuner = FineTuner(run.data, run.model, run.preset, config_file=run.config_file, env_file=None, **overrides)
    return tuner.plan().resolved.config


class _Objective:
    def __init__(self, folder: Path, space: Space, run: TrialRun, settings: TuneSettings, subscribe) -> None:
        self.folder, self.space, self.run, self.settings, self.subscribe = folder, space, run, settings, subscribe
        self.alpha_ratio = self._alpha_ratio()

    def _alpha_ratio(self) -> float | None:
        if "lora_r" not in self.space.keys or "lora_alpha" in self.space.keys:
            return None
        lora = resolved_config(self.run, self.settings).lora
        return lora.lora_alpha / lora.lora_r

    def __call__(self, trial) -> float:
        import optuna
        import psutil

        from llmc_cli import FineTuner
        from llmc_cli.engine.interrupt import StopRequest
        from llmc_cli.engine.recovery import release_memory
        from llmc_cli.events import EvalEnded, StepEnded

        trial.set_user_attr("worker", worker_identity())
        reap_stale(trial.study)
        params = self.space.suggest(trial)
        values = dict(params)
        if self.alpha_ratio is not None:
            values["lora_alpha"] = params["lora_r"] * self.alpha_ratio
        trial.set_user_attr("values", values)  # what it trained with, derived values included
        overrides = {**self.run.overrides, **values}
        overrides.pop("output", None)  # a trial's run goes under the study's folder
        if self.settings.budget_steps:
            overrides["max_steps"] = self.settings.budget_steps
            # The pruner needs evaluations along the way: a run's own interval can leave only the
            # last one when the validation set is large next to a short budget.
            overrides.setdefault("eval_every", max(1, self.settings.budget_steps // EVALUATIONS))
        stop = StopRequest()
        seen = {"tokens": 0}

        def on_event(event) -> None:
            if isinstance(event, StepEnded):
                seen["tokens"] += event.tokens
            elif isinstance(event, EvalEnded) and event.step > 0:
                trial.report(event.eval_loss, event.step)
                if trial.should_prune():
                    stop.request("pruned")

        tuner = FineTuner(self.run.data, self.run.model, self.run.preset, config_file=self.run.config_file,
                          env_file=None, output=self.folder / "trials", run_name=f"trial-{trial.number}",
                          report_to="none", **overrides)  # fmt: skip
        tuner.subscribe(on_event)
        if self.subscribe is not None and (extra := self.subscribe(trial)) is not None:
            tuner.subscribe(extra)
        trial.set_user_attr("run_dir", str(self.folder / "trials" / f"trial-{trial.number}"))
        failure: RunInterrupted | TrainingError | None = None
        try:
            run_dir = tuner.train(stop=stop)
        except (RunInterrupted, TrainingError) as exc:
            # The traceback's frames hold the trial's model and optimizer: drop them before freeing memory,
            # or a pruned or failed trial's model is still alive when the memory is handed back.
            failure = exc.with_traceback(None)
            failure.__context__ = failure.__cause__ = None
        del tuner
        release_memory()
        trial.set_user_attr("rss_after_mb", round(psutil.Process().memory_info().rss / 2**20, 1))
        trial.set_user_attr("tokens", seen["tokens"])
        if isinstance(failure, RunInterrupted):
            if stop.reason == "pruned":
                raise optuna.TrialPruned()
            trial.set_user_attr("interrupted", True)
            trial.study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number, "interrupted_rerun": True})
            raise failure
        if failure is not None:
            trial.set_user_attr("failure", f"{failure.title}: {failure.message}")
            raise failure
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        value = summary.get("final_eval_loss")
        if value is None:
            raise TrainingError(
                "The trial's run has no evaluation loss to rank it by.",
                hint="Keep a validation set (do not pass --val-split 0).",
            )
        return float(value)
