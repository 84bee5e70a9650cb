"""The write path's disk-error handling: which errors mean a full disk, and directories that appear whole."""

import errno

import pytest
from safetensors import SafetensorError

from llmc_cli.checkpoints.manager import CheckpointManager, Policy
from llmc_cli.durable import disk_error, disk_errors, staged_dir
from llmc_cli.errors import DiskFull
from llmc_cli.events import TrainingWarning
from llmc_cli.faults import Faults, parse


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        OSError(errno.EROFS, "Read-only file system"),
        # What safetensors and tokenizers raise on a real full tmpfs (seen in this repo's tests):
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
        Exception("No space left on device (os error 28)"),
    ],
    ids=["enospc", "edquot", "erofs", "safetensors", "tokenizers"],
)
def test_disk_errors_are_recognised_whatever_library_raises_them(exc):
    assert disk_error(exc)
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = exc
    assert disk_error(wrapped)  # and through a chain


@pytest.mark.parametrize(
    "exc",
    [OSError(errno.ENOENT, "No such file"), ValueError("no space for this value"), RuntimeError("CUDA out of memory")],
)
def test_other_errors_are_not_disk_errors(exc):
    assert not disk_error(exc)


def test_disk_errors_become_diskfull_with_the_space_needed(tmp_path):
    with pytest.raises(DiskFull) as caught, disk_errors("the final adapter", tmp_path, needed=3 * 2**20):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert caught.value.exit_code == 10 and "at least 3.0 MB needed" in caught.value.message
    assert str(tmp_path) in caught.value.message and "free there" in caught.value.message
    with pytest.raises(KeyError), disk_errors("x", tmp_path):  # anything else passes through unchanged
        raise KeyError("k")


def test_a_staged_directory_is_complete_or_absent(tmp_path):
    target = tmp_path / "final"
    with staged_dir(target) as partial:
        (partial / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(OSError), staged_dir(target) as partial:
        (partial / "a.txt").write_text("two, half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert (target / "a.txt").read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    with staged_dir(target) as partial:  # a later success replaces the old directory whole
        (partial / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


class Bus:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)


@pytest.mark.parametrize("action", ["enospc", "library"])
def test_a_checkpoint_that_meets_a_full_disk_is_dropped_whatever_the_error_type(tmp_path, action):
    bus = Bus()
    policy = Policy(interval_steps=2, interval_minutes=None, keep_last=3, keep_best=0, metric="eval_loss",
                    on_error="continue")  # fmt: skip
    manager = CheckpointManager(tmp_path, policy, bus, Faults(parse(f"checkpoint.write@4:{action}")))

    def write(directory):
        (directory / "weights.bin").write_bytes(b"w" * 100)
        return {"step": 0}

    assert manager.save(2, write, "interval") is not None
    assert manager.save(4, write, "interval") is None
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000002"]
    warning = [e for e in bus.events if isinstance(e, TrainingWarning)][-1]
    assert "Checkpoint at step 4 could not be written" in warning.message and "Training goes on" in warning.message
    stopping = CheckpointManager(tmp_path, Policy(**{**policy.__dict__, "on_error": "stop"}), bus,
                                 Faults(parse(f"checkpoint.write@6:{action}")))  # fmt: skip
    with pytest.raises(DiskFull, match="Could not write the checkpoint of step 6"):
        stopping.save(6, write, "interval")


@pytest.mark.parametrize(
    "lines, expected",
    [
        (['{"step": 1}', '{"step": 2}'], [1, 2]),
        (['{"step": 1}', '{"step": 2}', '{"step": 3, "lo'], [1, 2]),  # a killed writer's torn last line
        (['{"step": 1}', '{"step": 2, "lo', '{"step": 3}'], [1, 3]),  # torn, then appended to by a resume
        (['{"step": 1}', "", "  ", '{"step": 2}'], [1, 2]),  # blank lines
        (['{"step": 1}', "[1, 2]", "7", '{"step": 2}'], [1, 2]),  # valid JSON that is not an object
        (['{"step": 1', "2}"], []),  # two halves that only make an object when joined
        ([], []),
    ],
)
def test_parse_jsonl_keeps_every_whole_object_and_only_those(lines, expected):
    from llmc_cli.durable import parse_jsonl

    assert [record["step"] for record in parse_jsonl(lines)] == expected
