"""The commit protocol and manifest: complete or absent, and every corruption detected."""

import errno
import json
import os

import pytest

from llmc_cli.checkpoints.commit import clean_unfinished, commit, remove
from llmc_cli.checkpoints.manifest import MANIFEST, verify


def _write_files(directory):
    (directory / "weights.bin").write_bytes(os.urandom(3 * 4096 + 17))
    (directory / "sub").mkdir()
    (directory / "sub" / "state.json").write_text('{"step": 3}')
    return {"step": 3}


def _corrupt(path, how):
    target = path / "weights.bin"
    data = bytearray(target.read_bytes())
    if how == "flip":
        data[1234] ^= 0x01
    elif how == "truncate":
        data = data[:-100]
    elif how == "zero-page":
        data[4096:8192] = bytes(4096)
    if how == "delete-file":
        target.unlink()
    elif how == "delete-manifest":
        (path / MANIFEST).unlink()
    else:
        target.write_bytes(bytes(data))


def test_commit_writes_a_verified_checkpoint_and_no_temporary(tmp_path):
    path = commit(tmp_path, "step-000003", _write_files)
    assert path == tmp_path / "step-000003"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000003"]
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == {"weights.bin", "sub/state.json"} and manifest["step"] == 3
    assert verify(path).ok


@pytest.mark.parametrize("how", ["flip", "truncate", "zero-page", "delete-file", "delete-manifest"])
def test_every_kind_of_corruption_is_detected(tmp_path, how):
    path = commit(tmp_path, "step-000003", _write_files)
    _corrupt(path, how)
    result = verify(path)
    assert not result.ok
    expected = {
        "flip": "sha256",
        "truncate": "bytes",
        "zero-page": "sha256",
        "delete-file": "missing",
        "delete-manifest": "manifest.json is missing",
    }[how]
    assert expected in result.reason()


def test_a_failed_write_leaves_nothing_and_keeps_older_checkpoints(tmp_path):
    older = commit(tmp_path, "step-000002", _write_files)

    def full_disk(directory):
        _write_files(directory)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        commit(tmp_path, "step-000004", full_disk)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002"]
    assert verify(older).ok


def test_injected_enospc_fault_point(tmp_path):
    from llmc_cli.faults import Faults, parse

    faults = Faults(parse("checkpoint.write@4:enospc"))
    commit(tmp_path, "step-000002", _write_files, step=2, faults=faults)  # other steps are unaffected
    with pytest.raises(OSError, match="No space left"):
        commit(tmp_path, "step-000004", _write_files, step=4, faults=faults)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002"]


def test_leftovers_of_crashes_are_recognised_and_cleaned(tmp_path):
    keep = commit(tmp_path, "step-000002", _write_files)
    (tmp_path / "step-000004.tmp").mkdir()
    (tmp_path / "step-000004.tmp" / "weights.bin").write_bytes(b"half")
    (tmp_path / "step-000001.deleting").mkdir()
    assert clean_unfinished(tmp_path) == ["step-000001.deleting", "step-000004.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002"]
    remove(keep)
    assert list(tmp_path.iterdir()) == []


def test_recommitting_a_step_sets_the_damaged_copy_aside(tmp_path):
    path = commit(tmp_path, "step-000002", _write_files)
    _corrupt(path, "flip")
    commit(tmp_path, "step-000002", _write_files)
    assert verify(path).ok
    assert (tmp_path / "step-000002.corrupt").is_dir()
