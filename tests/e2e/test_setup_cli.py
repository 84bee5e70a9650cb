"""``llmc setup`` as users meet it: in a real pseudo-terminal (pexpect), and with no terminal at all."""

import io
import os
import re
import subprocess
import sys

import pexpect
import pytest
from tests.conftest import SAMPLE_TRAIN

from llmc_cli.setup.wizard import QUESTIONS_WITH_DEFAULTS

COLOUR = re.compile(r"\x1b\[[0-9;]*?(?:3[0-8]|9[0-7])[;m]")  # an SGR foreground colour
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\r")
LLMC = [sys.executable, "-c", "from llmc_cli.cli.app import main; main()"]
QUESTIONS = (
    "Training data file?",
    "Which model?",
    "Which preset (goal)?",
    "Save a checkpoint every",
    "Keep how many recent checkpoints?",
    "Trackers besides",
    "Folder for the runs?",
    "Start training now?",
)


@pytest.fixture
def workspace(tmp_path, tiny_model_dir):
    """A project folder as a new user has it: one data file and one model folder."""
    lines = SAMPLE_TRAIN.read_text().splitlines()[:48]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "model").symlink_to(tiny_model_dir, target_is_directory=True)
    return tmp_path


def _env(tmp_path, **extra):
    return {
        **os.environ,
        "HF_HUB_CACHE": str(tmp_path / "no-hub-cache"),  # only the folder's own model is offered
        "PROMPT_TOOLKIT_NO_CPR": "1",  # pexpect does not answer cursor-position requests
        "TERM": "xterm-256color",
        "COLUMNS": "120",
        **extra,
    }


def _ready(child):
    """Wait until the prompt on screen takes keys: a text prompt shows its cursor, a list its instruction."""
    child.expect([r"\x1b\[\?25h", "Use arrow keys"])
    child.expect(pexpect.TIMEOUT, timeout=0.2)  # let it finish drawing


def _spawn(cwd, env):
    return pexpect.spawn(
        sys.executable, LLMC[1:] + ["setup"], cwd=str(cwd), env=env, dimensions=(60, 120), encoding="utf-8",
        timeout=60,
    )  # fmt: skip


def test_accepting_every_default_writes_the_config_and_starts_training(workspace):
    env = _env(workspace, LLMC_MAX_STEPS="1", NO_COLOR="1")
    assert len(QUESTIONS) == len(QUESTIONS_WITH_DEFAULTS)
    child = _spawn(workspace, env)
    child.logfile_read = screen_log = io.StringIO()
    for question in QUESTIONS:  # eight questions, each answered with Enter
        child.expect_exact(question)
        _ready(child)
        child.send("\r")
    child.expect(pexpect.EOF, timeout=300)
    child.close()
    screen = ANSI.sub("", child.before)
    assert child.exitstatus == 0, screen[-3000:]
    config = (workspace / "llmc.toml").read_text()
    assert 'data = "data.jsonl"\nmodel = "./model"\npreset = "bestaccuracy"\noutput = "runs"\n' in config
    assert 'report_to = ["tensorboard"]' in config
    assert "Training tinyllama model" in screen and "training complete" in screen
    assert (workspace / "runs" / "run-1" / "final" / "adapter_config.json").is_file()
    assert not COLOUR.search(screen_log.getvalue()), "NO_COLOR is set: bold is fine, colours are not"


def test_problems_are_named_by_line_and_ctrl_c_leaves_no_file(workspace):
    good = (workspace / "data.jsonl").read_text().splitlines()
    (workspace / "data.jsonl").rename(workspace / "good.jsonl")
    (workspace / "bad.jsonl").write_text("\n".join([good[0], '{"question": "no answer"}', good[1], "{oops"]) + "\n")
    child = _spawn(workspace, _env(workspace))
    child.expect_exact("Training data file?")
    _ready(child)
    child.send("\x15bad.jsonl\r")  # Ctrl-U clears the default (good.jsonl, the larger)
    child.expect_exact("problem(s), listed above")
    screen = ANSI.sub("", child.before)
    assert "line 2: no known format in the fields ['question']" in screen
    assert "line 4: invalid JSON" in screen
    child.expect_exact("Training data file?")  # asked again
    _ready(child)
    child.send("\x15good.jsonl\r")
    child.expect_exact("Which model?")
    _ready(child)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert not (workspace / "llmc.toml").exists()


def _setup(cwd, *args):
    return subprocess.run(
        [*LLMC, "setup", *args], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        env=_env(cwd),
    )  # fmt: skip


def test_unattended_yes_writes_the_config_and_answers_replay_byte_identical(workspace):
    done = _setup(workspace, "--yes", "--data", "data.jsonl", "--model", "./model", "--record", "answers.json")
    assert done.returncode == 0, done.stderr
    first = (workspace / "llmc.toml").read_bytes()
    assert b'preset = "bestaccuracy"' in first and not (workspace / "runs").exists()  # --yes does not train
    kept = _setup(workspace, "--yes", "--data", "data.jsonl", "--model", "./model", "--preset", "highspeed")
    assert kept.returncode == 2 and "--force" in kept.stderr
    assert (workspace / "llmc.toml").read_bytes() == first
    (workspace / "llmc.toml").unlink()
    replay = _setup(workspace, "--answers", "answers.json")
    assert replay.returncode == 0, replay.stderr
    assert (workspace / "llmc.toml").read_bytes() == first


@pytest.mark.parametrize(
    ("args", "flag"),
    [(("--data", "data.jsonl", "--model", "./model"), "--preset"), (("--yes", "--model", "./model"), "--data")],
)
def test_a_missing_answer_without_a_terminal_names_its_flag(tmp_path, workspace, args, flag):
    if flag == "--data":
        (workspace / "data.jsonl").unlink()  # nothing to default to
    done = _setup(workspace, *args)
    assert done.returncode == 2, done.stderr
    assert f"Pass {flag}" in done.stderr and "Traceback" not in done.stderr
    assert not (workspace / "llmc.toml").exists()
