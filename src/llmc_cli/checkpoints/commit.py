"""The commit protocol: write into ``NAME.tmp/``, fsync, manifest, rename to ``NAME``, fsync.

A crash at any instant leaves either the previous checkpoints untouched plus, at most, a
``.tmp`` directory (recognisably unfinished, removed at the next start), or the new
checkpoint complete with its manifest. Deletion is the same in reverse: rename to
``NAME.deleting`` first, so a half-deleted directory is never taken for a checkpoint.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmc_cli.checkpoints.manifest import write_manifest
from llmc_cli.durable import fsync_dir
from llmc_cli.faults import NO_FAULTS, Faults

TMP_SUFFIX = ".tmp"
DELETING_SUFFIX = ".deleting"
CORRUPT_SUFFIX = ".corrupt"


def commit(
    parent: Path,
    name: str,
    write: Callable[[Path], dict[str, Any]],
    step: int | None = None,
    faults: Faults = NO_FAULTS,
) -> Path:
    """Create ``parent/name`` atomically; ``write(tmp_dir)`` fills it and returns manifest metadata.

    On any failure (a full disk included) the temporary directory is removed and the error
    re-raised; nothing that existed before is touched. ``faults`` may kill the process or fill
    the disk at each phase (reliability tests).
    """
    parent.mkdir(parents=True, exist_ok=True)
    final, tmp = parent / name, parent / (name + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        meta = write(tmp)
        faults.at_checkpoint("checkpoint.write", step)
        write_manifest(tmp, meta)
        fsync_dir(tmp)
        faults.at_checkpoint("checkpoint.before-rename", step)
        if final.exists():  # a damaged earlier save of the same step: set aside, never trusted
            aside = parent / (name + CORRUPT_SUFFIX)
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(tmp, final)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    faults.at_checkpoint("checkpoint.after-rename", step)
    return final


def remove(path: Path, faults: Faults = NO_FAULTS, step: int | None = None) -> None:
    """Delete a checkpoint so that no crash can leave a partial one under its own name."""
    doomed = path.with_name(path.name + DELETING_SUFFIX)
    os.replace(path, doomed)
    fsync_dir(path.parent)
    faults.at_checkpoint("checkpoint.during-delete", step)
    shutil.rmtree(doomed)


def clean_unfinished(parent: Path) -> list[str]:
    """Remove leftovers of interrupted saves and deletions; returns their names."""
    removed = []
    if parent.is_dir():
        for path in sorted(parent.iterdir()):
            if path.is_dir() and path.name.endswith((TMP_SUFFIX, DELETING_SUFFIX)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    return removed


def is_checkpoint_name(name: str) -> bool:
    return not name.endswith((TMP_SUFFIX, DELETING_SUFFIX, CORRUPT_SUFFIX))
