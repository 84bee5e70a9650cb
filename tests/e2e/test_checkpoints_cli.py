"""Crash-proof checkpoints as users meet them: kill -9, crashes inside a save, corruption, a full disk.

Every crashed run is resumed with ``llmc resume`` and must end with exactly the per-step
losses and adapter weights of an uninterrupted run with the same seed.
"""

import random
import signal
import subprocess
import time

import pytest

from llmc_cli.engine.record import by_step

pytestmark = pytest.mark.filterwarnings("ignore")


def train_args(data, model, name):
    return [
        "train", "--data", data, "--model", model, "--preset", "highspeed", "--max-length", "128",
        "--batch-size", "2", "--grad-accum", "2", "--limit", "40", "--epochs", "2", "--lr", "5e-3",
        "--lora-dropout", "0.1", "--target-modules", "all-linear", "--checkpoint-interval", "2",
        "--max-checkpoints", "2", "--keep-best", "1", "--run-name", name,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(llmc, tmp_path_factory, tiny_model_dir, gsm8k_train):
    """A directory holding one uninterrupted reference run."""
    root = tmp_path_factory.mktemp("ckpt-e2e")
    result = llmc(*train_args(gsm8k_train, tiny_model_dir, "reference"), cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def losses(run_dir):
    return {step: record["loss"] for step, record in by_step(run_dir).items()}


@pytest.fixture(scope="module")
def check_resumed(llmc, same_adapter):
    """``check_resumed(root, name)``: resume run NAME, then compare it with the reference run."""

    def check(root, name):
        reference, run_dir = root / "runs" / "reference", root / "runs" / name
        result = llmc("resume", name, cwd=root)
        assert result.returncode == 0, result.stderr + result.stdout
        assert "Traceback" not in result.stderr
        assert losses(run_dir) == losses(reference)
        same_adapter(reference / "final", run_dir / "final")
        leftovers = [p.name for p in (run_dir / "checkpoints").iterdir()]
        assert not [n for n in leftovers if n.endswith((".tmp", ".deleting"))]
        return result

    return check


def test_kill_9_at_random_steps_then_resume_is_exact(
    check_resumed, llmc_command, workspace, tiny_model_dir, gsm8k_train
):
    total = max(losses(workspace / "runs" / "reference"))
    rng = random.Random(7)
    for attempt, kill_after in enumerate(sorted(rng.sample(range(3, total - 1), 2))):
        name = f"killed-{attempt}"
        proc = subprocess.Popen(
            [*llmc_command, *map(str, train_args(gsm8k_train, tiny_model_dir, name))],
            cwd=workspace,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for line in proc.stdout:
            if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= kill_after:
                time.sleep(rng.random() * 0.5)  # anywhere in the next step, a save included
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=120)
        assert proc.returncode == -signal.SIGKILL
        check_resumed(workspace, name)


@pytest.mark.parametrize(
    "fault",
    [
        "checkpoint.write@4:kill",  # files written, manifest not yet
        "checkpoint.before-rename@4:kill",  # complete but still .tmp
        "checkpoint.after-rename@4:kill",  # committed, rotation not yet run
        "checkpoint.during-delete@6:kill",  # rotation renamed an old one and died deleting it
    ],
)
def test_crash_at_each_save_phase_resumes_from_a_verified_checkpoint(
    llmc, check_resumed, workspace, tiny_model_dir, gsm8k_train, fault
):
    name = "crash-" + fault.split(".")[1].split("@")[0]
    result = llmc(*train_args(gsm8k_train, tiny_model_dir, name), cwd=workspace, env={"LLMC_FAULTS": fault})
    assert result.returncode == -signal.SIGKILL
    run_dir = workspace / "runs" / name
    for path in (run_dir / "checkpoints").iterdir():  # the fault leaves no half checkpoint under a real name
        if not path.name.endswith((".tmp", ".deleting")):
            assert llmc("checkpoints", "verify", path, cwd=workspace).returncode == 0, path
    check_resumed(workspace, name)


def test_corrupt_newest_checkpoint_is_refused_and_resume_falls_back(
    llmc, check_resumed, workspace, tiny_model_dir, gsm8k_train
):
    name = "corrupt"
    fault = {"LLMC_FAULTS": "checkpoint.after-rename@6:kill"}
    result = llmc(*train_args(gsm8k_train, tiny_model_dir, name), cwd=workspace, env=fault)
    assert result.returncode == -signal.SIGKILL
    run_dir = workspace / "runs" / name
    newest = run_dir / "checkpoints" / "step-000006"
    weights = newest / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x10
    weights.write_bytes(bytes(data))
    (run_dir / "checkpoints" / "step-000004" / "optimizer.json").unlink()  # damage another one too

    verify = llmc("checkpoints", "verify", name, cwd=workspace)
    assert verify.returncode == 6
    assert "step-000006: adapter_model.safetensors does not match its sha256" in " ".join(verify.stdout.split())
    listing = llmc("checkpoints", "list", name, cwd=workspace)
    assert listing.returncode == 0 and "FAILED" in listing.stdout

    result = check_resumed(workspace, name)
    said = " ".join(result.stdout.split())
    assert "Refused step-000006" in said and "Refused step-000004" in said and "from step-000002" in said


def test_full_disk_during_a_save_keeps_older_checkpoints(llmc, workspace, tiny_model_dir, gsm8k_train):
    args = train_args(gsm8k_train, tiny_model_dir, "full-disk")
    result = llmc(*args, cwd=workspace, env={"LLMC_FAULTS": "checkpoint.write@4:enospc"})
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert "Checkpoint at step 4 could not be written to" in said and "No space left on device" in said
    names = sorted(p.name for p in (workspace / "runs" / "full-disk" / "checkpoints").iterdir())
    assert "step-000004" not in names and not [n for n in names if n.endswith(".tmp")]

    args[-1] = "full-disk-stop"
    result = llmc(
        *args, cwd=workspace, env={"LLMC_FAULTS": "checkpoint.write@4:enospc", "LLMC_ON_CHECKPOINT_ERROR": "stop"}
    )
    assert result.returncode == 10 and "Traceback" not in result.stderr
    names = sorted(p.name for p in (workspace / "runs" / "full-disk-stop" / "checkpoints").iterdir())
    assert names == ["step-000002"]


def test_list_best_prune_and_info(llmc, workspace):
    run = "reference"
    listing = llmc("checkpoints", "list", run, cwd=workspace)
    assert listing.returncode == 0, listing.stderr
    assert "ok" in listing.stdout and "*" in listing.stdout
    best = llmc("checkpoints", "best", run, cwd=workspace)
    assert best.returncode == 0
    best_path = workspace / best.stdout.strip()
    assert (best_path / "manifest.json").is_file()
    info = llmc("checkpoints", "info", best_path, cwd=workspace)
    assert info.returncode == 0 and '"eval_loss"' in info.stdout and "adapter_model.safetensors" in info.stdout
    before = sorted(p.name for p in (workspace / "runs" / run / "checkpoints").iterdir())
    dry = llmc("checkpoints", "prune", run, "--keep", "1", "--keep-best", "0", "--dry-run", cwd=workspace)
    assert dry.returncode == 0 and "would delete" in dry.stdout
    assert sorted(p.name for p in (workspace / "runs" / run / "checkpoints").iterdir()) == before
    missing = llmc("checkpoints", "list", "run-99", cwd=workspace)
    assert missing.returncode == 6 and "No run 'run-99'" in missing.stderr and "Traceback" not in missing.stderr
