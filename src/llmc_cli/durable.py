"""The one write path for files that must survive a crash or a full disk, and tolerant readers.

A file is written to a temporary name beside its target, flushed and fsynced, then renamed
over the target and the directory fsynced: a reader sees the old content or the new, never
half of either, and a failed write (``ENOSPC``) leaves the old file and no temporary behind.
Checkpoints (their manifest; the files under it are fsynced by the commit), the run's
config and summary, and failure reports all go through :func:`write_text`. Nothing here imports the rest of llmc.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, payload: Any, *, atomic: bool = True) -> None:
    """:func:`write_text` of ``payload`` as indented JSON (values JSON cannot hold become strings).

    ``atomic=False`` writes in place: for files inside a directory that is committed as a whole
    (a checkpoint's ``step-N.tmp/``, whose commit fsyncs every file before the manifest and the
    rename), where a temporary name and fsync per file would only do that work twice.
    """
    text = json.dumps(payload, indent=2, default=str) + "\n"
    if atomic:
        write_text(path, text)
    else:
        path.write_text(text, encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON object of a JSON-lines file, in order; lines that do not parse (the torn last
    line of a killed writer) are skipped, and a missing file reads as empty."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records
