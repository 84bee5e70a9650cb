"""The CLI's shape: help loads no heavy library, and every train flag reaches the config.

How long `llmc --help` takes is measured by benchmarks/startup.py, not asserted here.
"""

import inspect
import os
import subprocess
import sys

import pytest

COMMANDS = ["--help", "train --help", "resume --help", "checkpoints --help", "checkpoints list --help",
            "presets --help", "analyze --help", "runs list --help", "setup --help"]  # fmt: skip
PROBE = """
import sys, time
started = time.perf_counter()
sys.argv = ["llmc", *sys.argv[1:]]
from llmc_cli.cli.app import main
try:
    main()
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate", "optuna") if m in sys.modules)
print(f"HEAVY={','.join(heavy)} SECONDS={time.perf_counter() - started:.3f}", file=sys.stderr)
"""


@pytest.mark.parametrize("command", COMMANDS)
def test_help_imports_no_heavy_library(command):
    """`llmc ... --help` must not import torch or transformers: they take seconds to load."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *command.split()],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("HEAVY=")]
    assert line.split()[0] == "HEAVY=", line


def test_every_train_parameter_is_a_config_key_or_a_command_switch():
    """Flags are collected by name (config_flags(locals())): a parameter named unlike its key would be lost."""
    from llmc_cli.cli.train import config_flags, train
    from llmc_cli.config.schema import FIELD_SECTION

    names = list(inspect.signature(train).parameters)
    switches = {"config", "demo", "dashboard", "dry_run", "as_json", "from_study", "storage"}
    assert [n for n in names if n not in FIELD_SECTION and n not in switches] == []
    from llmc_cli.cli.prepare import prepare

    names = list(inspect.signature(prepare).parameters)
    assert [n for n in names if n not in FIELD_SECTION and n not in {"config", "list_", "clean"}] == []
    assert config_flags({"lr": 0.1, "dashboard": False, "format": "qa"}) == {"lr": 0.1, "format": "qa"}


def _commands(command, path=()):
    """Every command of the live tree, as its argv path."""
    yield path
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _commands(sub, (*path, name))


def test_every_help_fits_80_columns_without_cutting_a_flag():
    import typer
    from typer.testing import CliRunner

    from llmc_cli.cli.app import app

    runner = CliRunner()
    paths = list(_commands(typer.main.get_command(app)))
    assert ("setup",) in paths and ("presets", "recommend") in paths
    for path in paths:
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
        assert shown.exit_code == 0, (path, shown.output)
        flags = [line for line in shown.output.splitlines() if line.lstrip("│ ").startswith("-")]
        assert flags, path
        assert not [line for line in flags if "…" in line.split("<")[0]], (path, flags)


def test_the_shipped_completion_scripts_are_what_the_live_command_writes():
    from pathlib import Path

    from llmc_cli.cli.completions import SHELLS, script

    folder = Path(__file__).resolve().parents[3] / "completions"
    for shell in SHELLS:
        assert (folder / f"llmc.{shell}").read_text() == script(shell), (
            f"completions/llmc.{shell} is stale: python -m llmc_cli.cli.completions completions"
        )
