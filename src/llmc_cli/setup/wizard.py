"""``llmc setup``: probe, profile, recommend, ask only what cannot be detected, then write ``llmc.toml``.

Every answer already given (a flag or ``--answers``) is not asked again. With defaults accepted a
session asks eight questions: data, model, preset, checkpoint interval, checkpoints kept, trackers,
output folder, and whether to start now (plus whether to replace an existing ``llmc.toml``). Nothing
is written until the last answer, and then in one atomic write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from llmc_cli.errors import ConfigError, DataError
from llmc_cli.setup import tables
from llmc_cli.setup.answers import FLAGS, Answers, render_toml
from llmc_cli.setup.assess import Option, assess, assess_presets, duration, family_epoch_seconds
from llmc_cli.setup.datacheck import DataProfile, data_files, profile_data
from llmc_cli.setup.models import find_models
from llmc_cli.setup.prompts import Choice, Prompter, whole_number
from llmc_cli.setup.recommend import Recommendation, bucket_of, recommend_model, recommend_preset

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> package
OTHER = "__other__"
# The questions of a session that accepts every default (tests/e2e/test_setup_cli.py answers exactly these).
QUESTIONS_WITH_DEFAULTS = (
    "data file",
    "model",
    "preset",
    "checkpoint interval",
    "checkpoints kept",
    "trackers",
    "output folder",
    "start now",
)


@dataclass(frozen=True)
class Outcome:
    answers: Answers
    config_path: Path
    text: str  # the llmc.toml written
    command: str  # the llmc train command that uses it


@dataclass(frozen=True)
class Context:
    console: Console
    prompter: Prompter
    models_dir: Path | None = None


def run(given: Answers, ctx: Context, config_path: Path, force: bool) -> Outcome:
    """The whole session; ``given`` holds the answers from flags and ``--answers``."""
    from llmc_cli.durable import write_text
    from llmc_cli.optimize.machine import advise, probe

    console, ask = ctx.console, ctx.prompter
    if config_path.exists() and not force:  # asked first: declining costs nothing
        if not ask.confirm(f"{config_path} exists. Replace it at the end?", False, "--force"):
            raise ConfigError(f"{config_path} exists and was kept as it is.",
                              hint="Pass --force to replace it, or --config-out OTHER.toml.")  # fmt: skip
    with console.status("Probing the machine..."):
        machine = probe([Path(given.output or "runs")])
        advice = advise(machine)
    console.print(tables.machine_line(machine, advice), soft_wrap=True)
    answers = Answers(**given.to_dict())
    answers.data, profile = _data(ctx, given.data)
    answers.model = given.model or _model(ctx, Path(answers.data), machine, advice)
    options, recommended = _presets_shown(ctx, answers, profile)
    console.print(f"[bold]Recommended preset:[/] {recommended.choice}: {escape(recommended.reason)}", soft_wrap=True)
    answers.preset = given.preset or ask.select(
        "Which preset (goal)?",
        [Choice(o.preset, _preset_label(o)) for o in options],
        recommended.choice,
        FLAGS["preset"],
    )
    chosen = next((o for o in options if o.preset == answers.preset), None)
    _monitoring(ctx, answers, given, chosen)
    text = render_toml(answers, config_path)
    write_text(config_path, text)
    command = "llmc train" + ("" if config_path == Path("llmc.toml") else f" --config {config_path}")
    console.print(f"Wrote [bold]{escape(str(config_path))}[/]. Train with: [bold]{command}[/]", soft_wrap=True)
    if answers.start is None:
        answers.start = ask.confirm("Start training now?", True, FLAGS["start"])
    return Outcome(answers, config_path, text, command)


def _data(ctx: Context, given: str | None) -> tuple[str, DataProfile]:
    """Ask for a data file until one has no problems (on a terminal); unattended, problems are an error."""
    found = data_files(Path.cwd())
    default = given or (str(found[0]) if found else None)
    while True:
        if given is None:
            answer = ctx.prompter.text("Training data file?", default, FLAGS["data"], path=True)
        else:
            answer, given = given, None
        try:
            with ctx.console.status("Reading the data..."):
                profile = profile_data(Path(answer))
        except DataError as exc:
            _retry_or_raise(ctx, exc)
            continue
        ctx.console.print(tables.data_table(profile, bucket_of(profile.records) if profile.format else None))
        if profile.usable:
            return answer, profile
        error = DataError(
            f"{answer}: {profile.n_problems} problem(s), listed above with their line numbers.",
            hint="Fix those lines (each example needs the fields of one format: instruction/output, prompt/"
            "completion, question/answer, messages, conversations or text), or choose another file.",
        )
        _retry_or_raise(ctx, error)
        default = answer


def _retry_or_raise(ctx: Context, error: DataError) -> None:
    from llmc_cli.setup.prompts import Interactive

    if not isinstance(ctx.prompter, Interactive):
        raise error
    ctx.console.print(f"[bold red]{escape(error.message)}[/]" + (f"\n{escape(error.hint)}" if error.hint else ""))


def _model(ctx: Context, data: Path, machine, advice) -> str:
    folders = [(Path("."), "current folder")]
    if ctx.models_dir is not None:
        folders.append((ctx.models_dir, "--models-dir"))
    local = find_models(folders)
    rows, fits, options = [], [], []
    with ctx.console.status("Fitting each local model to this machine..."):
        for model in local:
            option = assess(data, str(model.location), "quality")
            options.append(option)
            time = duration(option.per_epoch_s) if option.peak_bytes is not None else option.error
            rows.append((model.label, model.where, option.fits if option.peak_bytes else None, option.peak_bytes, time))
            fits.append((model.label, option.fits, option.per_epoch_s, option.peak_bytes or 0))
    sample = next((option for option in options if option.mean_tokens), None)
    rows += _hub_families(machine, advice, sample)
    ctx.console.print(tables.models_table(rows))
    fits.sort(key=lambda item: -item[3])  # the largest model first
    recommendation = recommend_model([item[:3] for item in fits]) or _family_recommendation(machine)
    ctx.console.print(f"[bold]Recommended model:[/] {escape(recommendation.choice)}: {escape(recommendation.reason)}")
    choices = [Choice(m.label, f"{m.label} ({m.where}, {m.family})") for m in local]
    choices += [Choice(name, f"{name} (download from the Hugging Face Hub)") for name, *_ in rows[len(local) :]]
    choices.append(Choice(OTHER, "another folder or hub id..."))
    picked = ctx.prompter.select("Which model?", choices, recommendation.choice, FLAGS["model"])
    if picked == OTHER:
        picked = ctx.prompter.text("Model folder or hub id?", None, FLAGS["model"], path=True)
    return picked


def _hub_families(machine, advice, sample: Option | None) -> list[tuple[str, str, bool | None, int | None, str]]:
    """The families by ``llmc doctor``'s estimate (quality preset), not on this machine; their time an epoch
    counts this data's tokens with a local model's tokenizer (``sample``), when there is one."""
    from llmc_cli.optimize.machine import family_report

    precision = advice[0].answer  # advice[0]: the precision training would use
    report = family_report(machine, precision)
    device = "cuda" if machine.gpus else "cpu"
    rows = []
    for fit in (f for f in report.fits if f.preset == "quality"):
        seconds = None
        if sample is not None:
            seconds = family_epoch_seconds(fit.family, "quality", fit.gradient_checkpointing, precision, device, sample)
        time = f"{duration(seconds)} (est.)" if seconds is not None else "needs a local tokenizer to count tokens"
        rows.append((fit.family, "Hugging Face Hub", fit.fits, fit.total_bytes, time))
    return rows


def _family_recommendation(machine) -> Recommendation:
    from llmc_cli.optimize.hardware import pick_family

    family, why = pick_family(machine.hardware())
    return Recommendation(family, f"no local model found; {why} (it needs a download)")


def _presets_shown(ctx: Context, answers: Answers, profile: DataProfile) -> tuple[list[Option], Recommendation]:
    """Plan every preset, show the table, and recommend one."""
    overrides = {"output": answers.output} if answers.output else {}
    with ctx.console.status("Planning each preset on this data and machine..."):
        options = assess_presets(Path(answers.data), answers.model, overrides)
    failures = {o.error for o in options if o.failure is not None}
    if len(failures) == 1 and all(o.failure is not None for o in options):
        failure = options[0].failure
        recommended = recommend_preset(options, bucket_of(profile.records))
        ctx.console.print(f"[bold yellow]The presets cannot be planned with {escape(answers.model)}:[/] "
                          f"{escape(failure.message)}" + (f"\n{escape(failure.hint)}" if failure.hint else ""),
                          soft_wrap=True)  # fmt: skip
        return options, recommended
    lengths = next((o.lengths for o in options if o.lengths), None)
    if lengths:
        ctx.console.print(
            f"Token lengths with {escape(answers.model)}'s tokenizer: p50 {lengths['p50']}, p95 {lengths['p95']}, "
            f"p99 {lengths['p99']}, longest {lengths['max']}."
        )
    recommended = recommend_preset(options, bucket_of(_train_records(options, profile)))
    ctx.console.print(tables.presets_table(options, recommended.choice))
    return options, recommended


def _train_records(options: list[Option], profile: DataProfile) -> int:
    return next((o.train_records for o in options if o.train_records is not None), profile.records)


def _preset_label(option: Option) -> str:
    return f"{option.preset}: {tables.TRADE_OFF[option.preset]}"


def _monitoring(ctx: Context, answers: Answers, given: Answers, chosen: Option | None) -> None:
    import importlib.util

    ask = ctx.prompter
    steps = chosen.steps if chosen is not None else None
    interval = 100 if not steps else max(1, min(100, steps // 5))
    if given.checkpoint_interval is None:
        text = ask.text(
            f"Save a checkpoint every how many steps? (the run has about {steps or '?'})",
            str(interval),
            FLAGS["checkpoint_interval"],
            validate=whole_number,
        )
        answers.checkpoint_interval = int(text)
    if given.max_checkpoints is None:
        text = ask.text("Keep how many recent checkpoints?", "3", FLAGS["max_checkpoints"], validate=whole_number)
        answers.max_checkpoints = int(text)
    if given.report_to is None:
        installed = [name for name, package in TRACKERS.items() if importlib.util.find_spec(package) is not None]
        choices = [
            Choice(name, name, None if name in installed else f"pip install {TRACKERS[name]}") for name in TRACKERS
        ]
        default = [name for name in ("tensorboard",) if name in installed]
        answers.report_to = ask.checkbox(
            "Trackers besides metrics.jsonl and the dashboard?", choices, default, FLAGS["report_to"]
        )
    if given.output is None:
        answers.output = ask.text("Folder for the runs?", "runs", FLAGS["output"], path=True)
