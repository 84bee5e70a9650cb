"""Running the llmc command the way users do: a subprocess with its own exit code and output."""

import os
import subprocess
import sys

import pytest

LLMC = [sys.executable, "-c", "from llmc_cli.cli.app import main; main()"]


def run_llmc(*args, cwd, timeout=600, env=None):
    return subprocess.run(
        [*LLMC, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.fixture(scope="session")
def llmc():
    """``llmc(*args, cwd=..., env=...)`` -> CompletedProcess."""
    return run_llmc


@pytest.fixture(scope="session")
def llmc_command():
    """The argv prefix that runs llmc (for Popen)."""
    return LLMC
