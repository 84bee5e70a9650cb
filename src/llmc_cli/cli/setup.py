"""``llmc setup``: the guided wizard (setup/), and its answers as flags for scripts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from llmc_cli.cli.options import complete_preset

ANSWERS = "Answers (each one skips its question)"


def _answer(*names: str, **kwargs):
    return typer.Option(*names, rich_help_panel=ANSWERS, **kwargs)


def setup(
    data: Annotated[str | None, _answer("--data", "-d", help="Training data file.", show_default=False)] = None,
    model: Annotated[
        str | None, _answer("--model", "-m", help="Model folder, hub id or family.", show_default=False)
    ] = None,
    preset: Annotated[
        str | None,
        _answer("--preset", "-p", help="highspeed, quality or bestaccuracy.", autocompletion=complete_preset),
    ] = None,
    checkpoint_interval: Annotated[
        int | None, _answer("--checkpoint-interval", min=1, metavar="<int>", help="Checkpoint every N steps.")
    ] = None,
    max_checkpoints: Annotated[
        int | None, _answer("--max-checkpoints", min=1, metavar="<int>", help="Recent checkpoints to keep.")
    ] = None,
    report_to: Annotated[
        str | None, _answer("--report-to", help="Trackers: tensorboard, wandb, mlflow (comma-separated) or none.")
    ] = None,
    output: Annotated[str | None, _answer("--output", "-o", help="Folder for the runs.")] = None,
    start: Annotated[
        bool | None, _answer("--start/--no-start", help="Start training once the config is written.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Accept every recommendation; ask nothing.")] = False,
    answers: Annotated[
        Path | None, typer.Option("--answers", help="Replay the answers recorded with --record.", show_default=False)
    ] = None,
    record: Annotated[
        Path | None, typer.Option("--record", help="Save this session's answers to FILE.", show_default=False)
    ] = None,
    config_out: Annotated[Path, typer.Option("--config-out", help="The config file to write.")] = Path("llmc.toml"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing config file without asking.")] = False,
    models_dir: Annotated[
        Path | None, typer.Option("--models-dir", help="Also offer the model folders in DIR.", show_default=False)
    ] = None,
) -> None:
    """Guided set-up: probe the machine, check the data, recommend a model and preset, write llmc.toml.

    Every answer is also a flag; --yes accepts the recommendations, so it runs in scripts with no
    terminal (it starts training only with --start).

    Examples:

      llmc setup

      llmc setup --yes --data train.jsonl --model ./TinyLlama-1.1B-Chat
    """
    from llmc_cli.cli.train import quiet_libraries
    from llmc_cli.setup.answers import Answers, load_answers, save_answers
    from llmc_cli.setup.prompts import Interactive, Unattended
    from llmc_cli.setup.wizard import Context, run

    quiet_libraries()
    reports = None if report_to is None else [n.strip() for n in report_to.split(",") if n.strip() not in ("", "none")]
    given = Answers(data, model, preset, checkpoint_interval, max_checkpoints, reports, output, start)
    if answers is not None:
        given = given.merged(load_answers(answers))
    if yes and given.start is None:
        given.start = False  # --yes writes the config; training starts with --start
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    prompter = Interactive() if terminal and not yes else Unattended(accept=yes)
    console = Console(highlight=False)
    outcome = run(given, Context(console, prompter, models_dir), config_out, force)
    if record is not None:
        save_answers(record, outcome.answers)
        console.print(f"Answers saved to {record} (replay: llmc setup --answers {record}).")
    if outcome.answers.start:
        from llmc_cli import FineTuner
        from llmc_cli.cli.train import execute

        tuner = FineTuner(config_file=outcome.config_path)
        with console.status("Checking configuration, data and model..."):
            tuner.plan()
        execute(tuner, console)
