"""The live dashboard as a user sees it: llmc train in a real pseudo-terminal (pexpect)."""

import os
import re
import sys

import pexpect

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\r")


def test_dashboard_shows_progress_losses_system_and_checkpoints(tmp_path, tiny_model_dir, gsm8k_train):
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
    screen = ANSI.sub("", child.before)
    assert child.exitstatus == 0, screen[-3000:]
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
