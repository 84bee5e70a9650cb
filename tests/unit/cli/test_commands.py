"""The CLI's shape: help loads no heavy library, and every train flag reaches the config.

How long `llmc --help` takes is measured by benchmarks/startup.py, not asserted here.
"""

import inspect
import os
import subprocess
import sys

import pytest

COMMANDS = ["--help", "train --help", "resume --help", "checkpoints --help", "checkpoints list --help",
            "presets --help", "analyze --help", "runs list --help"]  # fmt: skip
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
