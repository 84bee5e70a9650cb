"""The live dashboard as a user sees it: llmc train in a real pseudo-terminal (pexpect)."""

import os
import re
import sys

import pexpect
import pytest

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\r")


@pytest.fixture(scope="module")
def dashboard_run(tmp_path_factory, tiny_model_dir, gsm8k_train):
    """A short run trained in a 140-column pseudo-terminal: (what the screen showed, exit status, cwd)."""
    tmp_path = tmp_path_factory.mktemp("dashboard")
    args = [
        "-c", "from llmc_cli.cli.app import main; main()",
        "train", "--data", str(gsm8k_train), "--model", str(tiny_model_dir), "--preset", "highspeed",
        "--max-steps", "8", "--limit", "60", "--max-length", "128", "--batch-size", "2", "--grad-accum", "1",
        "--checkpoint-interval", "4",
    ]  # fmt: skip
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "50"}
    child = pexpect.spawn(
        sys.executable, args, cwd=str(tmp_path), env=env, dimensions=(50, 140), encoding="utf-8", timeout=300
    )
    child.expect(pexpect.EOF)
    child.close()
    return ANSI.sub("", child.before), child.exitstatus, tmp_path


def test_dashboard_shows_progress_losses_system_and_checkpoints(dashboard_run):
    screen, status, _ = dashboard_run
    assert status == 0, screen[-3000:]
    for seen in (
        "progress",
        "step 8/8",
        "ETA",
        "train loss",
        "eval loss",
        "learning rate",
        "grad norm",
        "tokens/s",
        "samples/s",
        "CPU",
        "RSS",
        "GPU",
        "n/a",  # no GPU on this machine
        "last checkpoint: step 8",
        "training complete",
        "Checkpoints: 2 kept",
    ):
        assert seen in screen, seen
    assert "Traceback" not in screen


def test_no_dashboard_prints_plain_lines_even_on_a_terminal(tmp_path, tiny_model_dir, gsm8k_train):
    args = [
        "-c", "from llmc_cli.cli.app import main; main()",
        "train", "--data", str(gsm8k_train), "--model", str(tiny_model_dir), "--preset", "highspeed",
        "--max-steps", "3", "--limit", "40", "--max-length", "128", "--no-dashboard",
    ]  # fmt: skip
    child = pexpect.spawn(sys.executable, args, cwd=str(tmp_path), dimensions=(50, 140), encoding="utf-8", timeout=300)
    child.expect(pexpect.EOF)
    child.close()
    screen = ANSI.sub("", child.before)
    assert child.exitstatus == 0, screen[-3000:]
    assert "step      3/3" in screen and "optimisation" not in screen


def test_tune_shows_the_study_view_on_a_terminal(tmp_path, tiny_model_dir, gsm8k_train):
    args = [
        "-c", "from llmc_cli.cli.app import main; main()",
        "tune", "--data", str(gsm8k_train), "--model", str(tiny_model_dir), "--preset", "highspeed",
        "--trials", "2", "--budget-steps", "2", "--limit", "40", "--method", "random",
    ]  # fmt: skip
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "50"}
    child = pexpect.spawn(
        sys.executable, args, cwd=str(tmp_path), env=env, dimensions=(50, 140), encoding="utf-8", timeout=300
    )
    child.expect(pexpect.EOF)
    child.close()
    screen = ANSI.sub("", child.before)
    assert child.exitstatus == 0, screen[-3000:]
    for seen in ("study tune-1", "trial 2/2", "complete 2  pruned 0  failed 0", "best so far", "step 2/2",
                 "trial 0: complete, eval loss", "trial 1: complete", "Best: trial"):  # fmt: skip
        assert seen in screen, seen
    assert "trial 0: training" not in screen and "Traceback" not in screen  # the plain lines are for pipes


@pytest.mark.parametrize("columns", [80, 140])
def test_analyze_fits_the_terminal_it_runs_in(dashboard_run, columns):
    _, status, cwd = dashboard_run
    assert status == 0
    args = ["-c", "from llmc_cli.cli.app import main; main()", "analyze", "run-1"]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"TERM": "xterm-256color"}
    child = pexpect.spawn(sys.executable, args, cwd=str(cwd), env=env, dimensions=(50, columns), encoding="utf-8",
                          timeout=120)  # fmt: skip
    child.expect(pexpect.EOF)
    child.close()
    raw = child.before
    screen = ANSI.sub("", raw)
    assert child.exitstatus == 0, screen[-3000:]
    assert "\x1b[" in raw  # colour on a terminal
    lines = [line for line in screen.split("\n") if line.strip()]
    assert max(len(line) for line in lines) <= columns
    seen_all = ("Run runs/run-1: completed, step 8 of 8", "convergence:", "overfitting:", "learning rate:",
                "stability:", "efficiency:", "┤")  # fmt: skip
    for seen in seen_all:
        assert seen in screen, seen
    assert "Traceback" not in screen
