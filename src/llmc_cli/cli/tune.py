"""``llmc tune``: a hyperparameter study over llmc runs (tune/), and ``llmc tune show``."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llmc_cli.cli.options import ConfigOpt, DashboardOpt, DataOpt, ModelOpt, PresetOpt
from llmc_cli.errors import ConfigError, RunInterrupted

app = typer.Typer(
    help="Search learning rate, LoRA rank/dropout, target modules, warm-up and weight decay with Optuna.",
    no_args_is_help=False,
)

OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Folder that holds studies (and runs).")]
StudyOpt = Annotated[
    str | None, typer.Option("--study", help="Study name: a new one, or one to continue (default: the next tune-N).")
]
StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="An Optuna RDB URL (sqlite:///..., postgresql://...) for workers on many hosts."),
]


@app.callback(invoke_without_command=True)
def tune(
    ctx: typer.Context,
    data: DataOpt = None,
    model: ModelOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    trials: Annotated[
        int | None,
        typer.Option("--trials", "-n", min=1, help="Trials in the study, in all (default: HYPERPARAMETER_TRIALS, 10)."),
    ] = None,
    method: Annotated[str, typer.Option("--method", help="tpe, random or grid.")] = "tpe",
    pruner: Annotated[str, typer.Option("--pruner", help="median, hyperband, halving or none.")] = "median",
    budget_steps: Annotated[
        int | None, typer.Option("--budget-steps", min=1, help="Optimizer steps per trial (default: the run's plan).")
    ] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=1, help="Stop starting trials after N s.")] = None,
    space: Annotated[Path | None, typer.Option("--space", help="A search space TOML (see the README).")] = None,
    study: StudyOpt = None,
    storage: StorageOpt = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Worker processes on this machine, this one included.")
    ] = 1,
    output: OutputOpt = Path("runs"),
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N examples.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler.")] = 42,
    dashboard: DashboardOpt = True,
) -> None:
    """Run a study: each trial is an llmc run under the study's folder; the best is the lowest eval loss.

    Example: llmc tune --data train.jsonl --model ./my-model --preset quality --trials 20 --budget-steps 100
    """
    if ctx.invoked_subcommand is not None:
        return
    from llmc_cli.cli.train import quiet_libraries
    from llmc_cli.monitor.study_view import StudyView, study_counts
    from llmc_cli.tune.best import record_base
    from llmc_cli.tune.space import default_space, load_space
    from llmc_cli.tune.study import (
        TrialRun,
        TuneSettings,
        finished,
        open_study,
        resolved_config,
        run_study,
        seed_study,
        study_folder,
    )

    if method not in ("tpe", "random", "grid"):
        raise ConfigError(f"--method {method} is not a search method.", hint="Use --method tpe, random or grid.")
    if pruner not in ("median", "hyperband", "halving", "none"):
        raise ConfigError(f"--pruner {pruner} is not a pruner.", hint="Use median, hyperband, halving or none.")
    if data is None:
        raise ConfigError("No training data given.", hint="Pass --data FILE.")
    quiet_libraries()
    console = Console()
    overrides = {"output": output, **({"limit": limit} if limit else {})}
    if trials is None:
        from llmc_cli.config.layers import resolve
        from llmc_cli.engine.plan import user_layers

        layers = user_layers({"data": data, "model": model, "preset": preset}, config_file=config)
        trials = resolve(layers).config.flat()["hyperparameter_trials"]
    run = TrialRun(data, model, preset, overrides, config)
    settings = TuneSettings(trials, method, pruner, budget_steps, timeout, seed)  # type: ignore[arg-type]
    searched = load_space(space) if space is not None else default_space(resolved_config(run, settings))
    folder, name = study_folder(output, study)
    handle = open_study(folder, name, storage, settings, searched)
    record_base(handle, data, model, preset, config, overrides)
    console.print(f"Study {name} in {folder}: {settings.trials} trials, {method} with {pruner} pruning.")
    for dimension in searched.dimensions:
        console.print(f"  {dimension.key}: {dimension.describe()}")

    view = None
    if console.is_terminal and dashboard:
        view = StudyView(console, name, settings.trials, study_counts(handle, finished(handle)))

    def announce(trial):
        if view is not None:
            return view.trial_started(trial.number, trial.params)
        console.print(f"trial {trial.number}: training")
        return None

    def ended(trial) -> None:
        if trial.state.name == "COMPLETE":
            outcome = f"eval loss {trial.value:.4f}"
        elif trial.state.name == "PRUNED":
            outcome = f"pruned after {len(trial.intermediate_values)} evaluations"
        else:
            outcome = trial.user_attrs.get("failure", "failed")
        line = f"trial {trial.number}: {trial.state.name.lower()}, {outcome}"
        if view is not None:
            view.trial_ended(line, study_counts(handle, finished(handle)))
        else:
            console.print(line)

    argv = ["tune", "--data", data, "--trials", trials, "--method", method, "--pruner", pruner, "--study", name,
            "--output", output, "--seed", seed]  # fmt: skip
    for flag, value in (("--model", model), ("--preset", preset), ("--config", config), ("--space", space),
                        ("--budget-steps", budget_steps), ("--timeout", timeout), ("--storage", storage),
                        ("--limit", limit)):  # fmt: skip
        if value is not None:
            argv += [flag, value]
    seed_study(handle, searched, run, settings)  # before other workers can see an empty study
    helpers = [_start_worker(folder, number, argv) for number in range(1, workers)]
    if helpers:
        console.print(f"{len(helpers)} more worker(s): logs in {folder}/worker-N.log")
    try:
        with view or contextlib.nullcontext():
            run_study(handle, folder, searched, run, settings, subscribe=announce, ended=ended)
            for helper in helpers:
                helper.wait()
            if helpers:  # a helper that died after this worker's last trial left its trial to re-run
                run_study(handle, folder, searched, run, settings, subscribe=announce, ended=ended)
    except RunInterrupted:
        _print(console, handle, folder)
        raise RunInterrupted(
            f"Study {name} stopped; the trial in flight is queued to run again.",
            hint=f"Continue it with: llmc tune --study {name} --output {output} (and the same --data/--model).",
        ) from None
    _print(console, handle, folder)


def _start_worker(folder: Path, number: int, argv: list) -> subprocess.Popen:
    """Another ``llmc tune`` process on the same study, its output in ``worker-N.log``."""
    log = (folder / f"worker-{number}.log").open("w", encoding="utf-8")
    command = [sys.executable, "-c", "from llmc_cli.cli.app import main; main()", *map(str, argv)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@app.command("show")
def show(
    study: Annotated[str, typer.Argument(help="The study's name (tune-3) or folder.")],
    output: OutputOpt = Path("runs"),
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the study as JSON.")] = False,
) -> None:
    """Show a study: every trial (parameters, loss, state, time) and the best."""
    from llmc_cli.tune.report import describe
    from llmc_cli.tune.study import load_study

    folder = Path(study) if Path(study).is_dir() else output / study
    handle = load_study(folder, folder.name, storage)
    if as_json:
        print(json.dumps(describe(handle), indent=2, default=str))
        return
    _print(Console(), handle, folder)


def _print(console: Console, handle, folder: Path) -> None:
    from llmc_cli.tune.best import best_of, export
    from llmc_cli.tune.report import describe

    report = describe(handle)
    keys = list(dict.fromkeys(k for t in report["trials"] for k in t["params"]))
    table = Table(title=f"Study {report['study']} ({folder})")
    for column in ("#", "state", "eval loss", *keys, "time", "note"):
        table.add_column(column, overflow="fold")
    for t in report["trials"]:
        value = f"{t['value']:.4f}" if t["value"] is not None else ""
        params = [_fmt(t["params"].get(k)) for k in keys]
        duration = f"{t['duration_s']:.0f} s" if t["duration_s"] is not None else ""
        note = t["failure"] or (f"stopped after {t['steps_reported']} evaluations" if t["state"] == "PRUNED" else "")
        table.add_row(str(t["number"]), t["state"], value, *params, duration, note)
    console.print(table)
    if report["importances"]:
        shares = ", ".join(f"{key} {share:.0%}" for key, share in report["importances"].items())
        console.print(f"What mattered to the best trials (PED-ANOVA): {shares}")
    _history(console, report["trials"])
    best = report["best"]
    if best is None:
        console.print("No trial has completed yet.")
        return
    console.print(f"Best: trial {best['number']}, eval loss {best['value']:.4f}, run {best['run_dir']}")
    saved = folder / "best.toml"
    try:
        export(saved, best_of(handle))
        console.print(f"Its settings: {saved}. Train with them: llmc train --from-study {report['study']}"
                      f" (or --config {saved} --data FILE)")  # fmt: skip
    except OSError as exc:
        console.print(f"Could not write {saved}: {exc.strerror}.")
    except ConfigError as exc:  # the study's config file is gone: --from-study says so too
        console.print(f"Could not write {saved}: {exc.message}")


@app.command("best")
def best(
    study: Annotated[str, typer.Argument(help="The study's name (tune-3) or folder.")],
    output: OutputOpt = Path("runs"),
    storage: StorageOpt = None,
    export_to: Annotated[
        str | None,
        typer.Option(
            "--export",
            help="NAME: save as the preset tuned:NAME (llmc train --preset tuned:NAME); FILE.toml: write a "
            "self-contained llmc.toml.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the best trial as JSON.")] = False,
) -> None:
    """The study's best trial: its values, what it shared with the others, and how to train with it."""
    from llmc_cli.tune.best import export, export_preset, find_best

    found = find_best(study, output, storage)
    written = None
    if export_to is not None and (export_to.endswith(".toml") or "/" in export_to):
        written = Path(export_to)
        if written.exists():
            raise ConfigError(f"{written} already exists.", hint="Name a new file, or move the old one away.")
        export(written, found)
        how = f"llmc train --config {written} --data FILE"
    elif export_to is not None:
        written = export_preset(export_to, found)
        how = f"llmc train --preset tuned:{export_to} --data FILE --model MODEL"
    if as_json:
        fields = {"study": found.study, "number": found.number, "value": found.value}
        print(json.dumps({**fields, "values": found.values, "base": found.base}, indent=2, default=str))
        return
    console = Console()
    console.print(f"Study {found.study}: the best trial is {found.number}, eval loss {found.value:.4f}.")
    for key, value in found.values.items():
        console.print(f"  {key} = {_fmt(value)}")
    for key in ("data", "model", "preset", "config_file"):
        if found.base.get(key) is not None:
            console.print(f"  (shared) {key}: {found.base[key]}")
    if written is not None:
        console.print(f"Written to {written}: {how}")
    console.print(f"Train with it: llmc train --from-study {found.study} --output {output}")


def _history(console: Console, trials: list[dict]) -> None:
    """The optimisation history: each complete trial's eval loss and the best so far, in the terminal."""
    points = [(t["number"], t["value"]) for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    if len(points) < 2:
        return
    import plotext
    from rich.text import Text

    numbers, values = zip(*points, strict=True)
    best = [min(values[: i + 1]) for i in range(len(values))]
    figure = plotext.figure
    figure.clear()
    figure.plot_size(min(console.width, 80), 15)
    figure.draw(figure.signal(list(numbers), list(values), marker="dot").label("eval loss"))
    figure.draw(figure.signal(list(numbers), best).lines().label("best so far"))
    figure.title("optimisation history")
    figure.label("trial", "x")
    console.print(Text.from_ansi(str(figure.build())))  # colours only where the console has them


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)
