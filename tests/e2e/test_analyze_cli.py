"""`llmc analyze` and `llmc runs list` as commands: their output piped, as JSON, side by side, and
their refusals. The runs are written by hand with known curves (tests/conftest.py: write_run); a
real run is analysed in a pseudo-terminal in test_dashboard_pty.py."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ESC = "\x1b"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_run):
    root = tmp_path_factory.mktemp("analyze")
    decay = {s: 0.6 + 1.4 * math.exp(-s / 25) for s in range(1, 121)}
    overfit = [(0, 2.0)] + [(s, 1.3 + 0.0001 * (s - 60) ** 2) for s in range(10, 121, 10)]
    healthy = [(0, 2.0)] + [(s, 1.25 + 0.7 * math.exp(-s / 25)) for s in range(10, 121, 10)]
    make_run(root / "runs" / "run-1", decay, overfit, summary={"wall_time_s": 95.0})
    make_run(root / "runs" / "run-2", decay, healthy, lr=1e-4, summary={"wall_time_s": 90.0})
    return root


def test_a_piped_report_names_the_problem_and_the_fix_without_escape_codes(llmc, runs):
    done = llmc("analyze", "run-1", cwd=runs)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert ESC not in out
    assert "Recommendations (most effect first)" in out
    assert "overfitting: the eval loss turned upwards at step 60" in " ".join(out.split())
    assert "--max-steps 60" in out
    for section in ("convergence:", "overfitting:", "learning rate:", "stability:", "data:", "efficiency:"):
        assert section in out
    for plot in ("loss", "learning rate", "gradient norm", "tokens/s"):
        assert f" {plot} " in out or f"{plot}\n" in out
    assert "┤" in out  # plotext's axis


def test_json_has_the_findings_and_sections(llmc, runs):
    done = llmc("analyze", "1", "--json", cwd=runs)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["findings"][0]["kind"] == "overfitting"
    assert data["findings"][0]["fix"].startswith("--max-steps 60")
    names = {s["name"] for s in data["sections"]}
    assert names == {"convergence", "overfitting", "learning rate", "stability", "data", "efficiency"}
    assert "lr_too_high" in data["kinds"]


def test_several_runs_side_by_side(llmc, runs):
    done = llmc("analyze", "run-1", "run-2", "--no-plots", cwd=runs)
    assert done.returncode == 0, done.stderr
    assert "Runs side by side" in done.stdout and "Config keys that differ" in done.stdout
    assert "0.0002" in done.stdout and "0.0001" in done.stdout  # the lr row of the diff
    data = json.loads(llmc("analyze", "run-1", "run-2", "--json", cwd=runs).stdout)
    assert data["config_diff"] == {"lr": [2e-4, 1e-4]}
    assert [r["findings"][0]["kind"] if r["findings"] else None for r in data["runs"]][0] == "overfitting"


def test_png_writes_the_plots_as_image_files(llmc, runs, tmp_path):
    done = llmc("analyze", "run-1", "--png", tmp_path / "plots", "--no-plots", cwd=runs)
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert files == ["grad_norm.png", "loss.png", "lr.png", "tokens_per_s.png"]
    assert (tmp_path / "plots" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = llmc("analyze", "run-1", "run-2", "--png", tmp_path / "both", "--no-plots", cwd=runs)
    assert done.returncode == 0, done.stderr
    names = {p.name for p in (tmp_path / "both").iterdir()}
    assert {"run-1-loss.png", "run-2-loss.png", "compare-train_loss.png", "compare-eval_loss.png"} <= names
    (tmp_path / "a-file").write_text("")
    done = llmc("analyze", "run-1", "--png", tmp_path / "a-file", cwd=runs)
    assert done.returncode == 2 and "is a file, not a folder" in done.stderr


def test_runs_list_shows_status_steps_best_eval_and_time(llmc, runs):
    done = llmc("runs", "list", cwd=runs)
    assert done.returncode == 0, done.stderr
    for seen in ("run-1", "run-2", "completed", "120/120", "1.3000", "95 s"):
        assert seen in done.stdout, seen
    rows = json.loads(llmc("runs", "list", "--json", cwd=runs).stdout)
    assert [r["run"] for r in rows] == ["run-1", "run-2"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("run-9", "No run 'run-9'."),
        ("not-a-run", "is not a run directory (no config.json)."),
        ("empty", "has no readable step or evaluation"),
    ],
)
def test_bad_input_gets_one_message_and_a_non_zero_exit(llmc, tmp_path, target, message):
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"config": {"training": {}}, "sources": {}}))
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    done = llmc("analyze", target, cwd=tmp_path)
    assert done.returncode == 2
    assert message in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_run_names_complete_in_the_shell(runs):
    llmc_bin = Path(sys.executable).parent / "llmc"
    env = {**os.environ, "COMP_WORDS": "llmc analyze run-", "COMP_CWORD": "2", "_LLMC_COMPLETE": "complete_bash"}
    done = subprocess.run([str(llmc_bin)], capture_output=True, text=True, cwd=runs, env=env, timeout=60)
    assert done.stdout.split() == ["run-1", "run-2"]
