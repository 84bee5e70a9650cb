"""The one write path for files that must survive a crash or a full disk, and tolerant readers.

A file is written to a temporary name beside its target, flushed and fsynced, then renamed
over the target and the directory fsynced: a reader sees the old content or the new, never
half of either, and a failed write (``ENOSPC``) leaves the old file and no temporary behind.
Checkpoints (their manifest; the files under it are fsynced by the commit), the run's
config and summary, and failure reports all go through :func:`write_text`; a directory that
libraries fill (the final adapter, merged weights) goes through :func:`staged_dir`, so it is
complete or absent, never half. :func:`disk_error` recognises a full or failing disk in the
exception of any library (safetensors and tokenizers raise their own types, with the OS
message inside). Nothing here imports the rest of llmc but its errors.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmc_cli.errors import DiskFull

TMP_SUFFIX = ".tmp"
PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}
# How the OS errors read once a library has wrapped them in its own exception type.
DISK_MESSAGES = (
    "no space left on device",
    "disk quota exceeded",
    "input/output error",
    "read-only file system",
    "os error 28)",
    "os error 122)",
    "os error 5)",
    "os error 30)",
)


def disk_error(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a full, failing or read-only disk."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull):
            return True
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return True
        if not isinstance(exc, OSError) or exc.errno is None:  # a library's wrapper: read its message
            text = str(exc).lower()
            if any(message in text for message in DISK_MESSAGES):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(path: Path) -> int | None:
    """Free space on the filesystem holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(count) < 1024 or unit == "GB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024
    return f"{count:,.1f} TB"


def disk_full(exc: BaseException, what: str, where: Path, needed: int | None = None) -> DiskFull:
    """The error to raise when writing ``what`` into ``where`` failed on a full or failing disk."""
    free = free_bytes(where)
    space = f"{human_bytes(free)} free" if free is not None else "free space unknown"
    need = f", at least {human_bytes(needed)} needed" if needed else ""
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]
    error = DiskFull(
        f"Could not write {what} to {where}: {reason} ({space} there{need}).",
        hint=f"Free space on the disk holding {where} (or choose another --output), then `llmc resume` the run.",
    )
    error.detail = f"{reason} ({space} there{need})"
    return error


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
    """Every JSON object of a JSON-lines file, in order (see :func:`parse_jsonl`); a missing file
    reads as empty."""
    return parse_jsonl(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else []


def parse_jsonl(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The JSON objects among ``lines``; lines that do not parse (the torn last line of a killed
    writer) are skipped.

    The lines are parsed as one JSON array first (a third faster than a call per line on a
    100,000-step metrics.jsonl), then without the last line, and line by line only where that
    fails too."""
    lines = [line for line in lines if line.strip()]
    for whole in (lines, lines[:-1]):
        try:
            records = json.loads("[" + ",".join(whole) + "]")
        except ValueError:
            continue
        if len(records) == len(whole) and all(isinstance(record, dict) for record in records):
            return records
        break
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


@contextmanager
def disk_errors(what: str, where: Path, needed: int | None = None) -> Iterator[None]:
    """Turn a full or failing disk met while writing ``what`` into :class:`DiskFull`."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if disk_error(exc):
            raise disk_full(exc, what, where, needed) from exc
        raise


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Fill a directory that appears at ``target`` complete, or not at all.

    Yields ``target.partial`` to write into; on success every file is fsynced and the directory
    renamed to ``target`` (replacing an older one, which is removed only after the rename). On
    any failure the partial directory is removed and the error re-raised: ``target`` is untouched.
    """
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        yield partial
        for path in sorted(p for p in partial.rglob("*") if p.is_file()):
            fsync_file(path)
        fsync_dir(partial)
        old = target.with_name(target.name + OLD_SUFFIX)
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(partial, target)
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
