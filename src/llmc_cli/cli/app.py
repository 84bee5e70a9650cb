"""The ``llmc`` command: assembles the subcommands and owns the one error handler.

Known errors print as one paragraph (what, where, fix) and exit with their code; any
other exception prints one line and exits 1, unless LLMC_DEBUG=1 asks for the traceback.
Tracebacks never show local variables.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from llmc_cli import __version__
from llmc_cli.cli import analyze, checkpoints, doctor, prepare, presets, resume, setup, train, tune
from llmc_cli.errors import LlmcError

app = typer.Typer(
    name="llmc",
    help="Fine-tune open causal language models with LoRA / QLoRA: fast, observable, hard to break.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
app.command(name="setup")(setup.setup)
app.command(name="train")(train.train)
app.command(name="resume")(resume.resume)
app.command(name="prepare")(prepare.prepare)
app.command(name="doctor")(doctor.doctor)
app.command(name="analyze")(analyze.analyze)
app.add_typer(checkpoints.app, name="checkpoints")
app.add_typer(presets.app, name="presets")
app.add_typer(tune.app, name="tune")
app.add_typer(analyze.runs_app, name="runs")


def _version(value: bool) -> None:
    if value:
        print(f"llmc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """llmc: fine-tune causal LMs with LoRA."""


def main() -> None:
    """Entry point of the ``llmc`` script."""
    err = Console(stderr=True, highlight=False)
    debug = os.environ.get("LLMC_DEBUG", "") not in ("", "0", "false")
    try:
        app()
    except LlmcError as exc:
        if debug:
            raise
        # Messages are plain text: "[lora_r]" in one is a TOML table, not markup.
        err.print(f"[bold red]{exc.title}:[/] {escape(exc.message)}", soft_wrap=True)
        if exc.hint:
            err.print(f"[bold]Fix:[/] {escape(exc.hint)}", soft_wrap=True)
        if getattr(exc, "report", None):
            err.print(f"[bold]Failure report:[/] {exc.report}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("Interrupted.")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        err.print(
            f"[bold red]Internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
            "This is a bug in llmc. Run again with LLMC_DEBUG=1 to see the traceback, and report it.",
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
