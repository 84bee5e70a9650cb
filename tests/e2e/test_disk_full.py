"""Real full disks: `llmc train` writing its run onto a small tmpfs that fills up for real.

Each test runs llmc in its own mount namespace (``unshare -rm``) with a fresh tmpfs as
``--output``; the ``disk-fill`` faults (llmc_cli/faults.py) write a filler file until the
filesystem has no byte left at a chosen moment, so the write that fails meets the kernel's own
ENOSPC inside safetensors, tokenizers, json or the metrics writer. Afterwards the tmpfs is
copied out (without the filler) for the assertions. Where mounting is not permitted the tests
are skipped, and the skip reason says so in the test output.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from llmc_cli.checkpoints.manifest import verify
from llmc_cli.faults import FILLER

MOUNT_SCRIPT = """
set -u
disk=$1; out=$2; shift 2
mount -t tmpfs -o "$LLMC_TEST_MOUNT" tmpfs "$disk" || exit 90
"$@"
rc=$?
find "$disk" -name '{filler}' -delete
cp -a "$disk/." "$out/"
exit $rc
""".replace("{filler}", FILLER)


def _mount_problem() -> str | None:
    if shutil.which("unshare") is None:
        return "the unshare command is not installed"
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True, text=True
    )
    return None if probe.returncode == 0 else f"mounting a tmpfs is not permitted here ({probe.stderr.strip()})"


PROBLEM = _mount_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"real full-disk tests not run: {PROBLEM}")


@pytest.fixture
def small_disk(tmp_path, llmc_command):
    """``run(*llmc_args, faults=...)`` -> (CompletedProcess, copy of the tmpfs after the run)."""

    def run(*args, faults: str = "", mount: str = "size=64m"):
        disk, out = tmp_path / "disk", tmp_path / "out"
        disk.mkdir()
        out.mkdir()
        argv = [*llmc_command, *map(str, args), "--output", str(disk), "--run-name", "run"]
        env = {"LLMC_FAULTS": faults, "COLUMNS": "200", "LLMC_TEST_MOUNT": mount}
        result = subprocess.run(
            ["unshare", "-rm", "sh", "-c", MOUNT_SCRIPT, "sh", str(disk), str(out), *argv],
            capture_output=True,
            text=True,
            timeout=600,
            env={**__import__("os").environ, **env},
            cwd=tmp_path,
        )
        assert result.returncode != 90, result.stderr
        return result, out / "run"

    return run


def base_args(data, model, steps=6, report="none"):
    return [
        "train", "--data", data, "--model", model, "--preset", "highspeed", "--max-length", "96",
        "--batch-size", "2", "--grad-accum", "1", "--limit", "24", "--max-steps", steps, "--eval-every", "3",
        "--checkpoint-interval", "2", "--no-dashboard", "--report-to", report,
    ]  # fmt: skip


def no_leftovers(run: Path) -> list[str]:
    """Temporary or partial files and folders a failed write must not leave behind."""
    return [str(p.relative_to(run)) for p in run.rglob("*") if p.name.endswith((".tmp", ".partial", ".old"))]


def test_a_checkpoint_on_a_full_disk_is_dropped_and_training_goes_on(small_disk, tiny_model_dir, gsm8k_train):
    # Twelve steps without space: their metrics lines (about 420 bytes each) outgrow the free end of
    # metrics.jsonl's last page (up to 4 KB, which still takes lines), so some are surely dropped.
    args = base_args(gsm8k_train, tiny_model_dir, steps=16, report="tensorboard")
    result, run = small_disk(*args, faults="disk-fill@3,disk-free@15")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception in thread" not in result.stderr
    said = " ".join(result.stdout.split())
    assert "Checkpoint at step 4 could not be written" in said and "No space left on device" in said
    assert "free there" in said and "Training goes on" in said
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "step-000004" not in names and "step-000014" not in names and "step-000016" in names
    assert not no_leftovers(run) and verify(run / "checkpoints" / "step-000016").ok
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["records_lost"] > 0  # lines of steps 4-14
    assert "cannot write" in result.stderr and "dropping its lines until space returns" in result.stderr
    # Lines that fitted in a file's last, already allocated page were written; the rest dropped,
    # none torn, and writing went on once space returned.
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 16
    assert (run / "final" / "adapter_model.safetensors").is_file()


def test_a_full_disk_at_the_final_save_leaves_no_half_adapter_and_resume_finishes(
    small_disk, llmc, tiny_model_dir, gsm8k_train
):
    result, run = small_disk(*base_args(gsm8k_train, tiny_model_dir), faults="disk-fill.final")
    assert result.returncode == 10, result.stderr
    assert "Disk full:" in result.stderr and "the final adapter" in result.stderr and "Traceback" not in result.stderr
    assert "needed" in result.stderr
    assert not (run / "final").exists() and not no_leftovers(run)
    assert verify(run / "checkpoints" / "step-000006").ok  # training is not lost
    if (run / "failure.txt").exists():  # written once the partial adapter was removed, or printed instead
        assert (run / "failure.txt").read_text().startswith("llmc run failed: disk")
    else:
        assert "llmc run failed: disk" in result.stderr
    resumed = llmc("resume", run, "--no-dashboard", cwd=run.parent)  # space is back: the run finishes
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "final" / "adapter_model.safetensors").is_file()


def test_a_full_disk_while_merging_keeps_the_finished_adapter(small_disk, tiny_model_dir, gsm8k_train):
    args = [*base_args(gsm8k_train, tiny_model_dir, steps=2), "--merge"]
    result, run = small_disk(*args, faults="disk-fill.merge")
    assert result.returncode == 10, result.stderr
    assert "the merged model (the adapter is complete in" in result.stderr and "Traceback" not in result.stderr
    assert not (run / "merged").exists() and not no_leftovers(run)
    assert (run / "final" / "adapter_model.safetensors").is_file() and (run / "final" / "adapter_config.json").is_file()


def test_a_failure_report_that_cannot_be_written_goes_to_stderr(small_disk, tiny_model_dir, gsm8k_train):
    result, run = small_disk(*base_args(gsm8k_train, tiny_model_dir), faults="error@3,disk-fill.report")
    assert result.returncode == 9, result.stderr
    assert "could not write the failure report" in result.stderr and "llmc run failed: other" in result.stderr
    assert "Traceback" not in result.stderr and "Python stack is left out" in result.stderr
    assert "could not write" in result.stderr and "summary.json" in result.stderr
    assert not (run / "failure.json").exists() and not (run / "failure.txt").exists()
    assert not (run / "summary.json").exists() and not no_leftovers(run)
    assert verify(run / "checkpoints" / "step-000002").ok


def test_an_output_on_a_read_only_filesystem_is_refused_before_the_model_loads(small_disk, tiny_model_dir, gsm8k_train):
    result, _ = small_disk(*base_args(gsm8k_train, tiny_model_dir), mount="size=1m,ro")
    assert result.returncode == 2, result.stderr
    assert "it is on a read-only filesystem" in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
