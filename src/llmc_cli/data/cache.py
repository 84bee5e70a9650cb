"""The prepared-data cache: token ids and target masks on disk, read a row at a time.

One entry per key (a fingerprint of the data files' contents, the tokenizer with its chat
template, and every setting that changes tokens; see data/prepare.py). An entry is a
directory::

    <root>/<key>/
        tokens.bin     token ids of every kept example, concatenated (uint16, or int32 for
                       vocabularies over 65,535)
        targets.bin    uint8, 1 where the token carries the loss
        offsets.npy    int64, example i is tokens[offsets[i]:offsets[i + 1]]
        records.npy    one row per record read (kept or dropped): flags, length before and
                       after truncation, target tokens, line, source (0 = --data, 1 = --val-data)
        layouts/       the split into train/val rows for a seed and packing (data/layout.py)
        manifest.json  written last: what the entry holds and the size of every file

Why flat binary files and numpy rather than Arrow (``datasets``): training reads a row as
two ``pread`` calls at known offsets, nothing is mapped into the process (so the resident
memory of a run does not grow with the dataset), no dependency is added, and the whole
format fits on this page. ``benchmarks/data.py`` measures it.

An entry is written under ``<key>.partial-<pid>`` and renamed into place when complete, so a
killed preparation never leaves an entry that looks usable; leftovers are removed (with a
notice) by the next preparation, and an entry whose files do not match its manifest is
rebuilt, never read.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmc_cli.data.tokenize import DROPPED, EncodedChunk
from llmc_cli.durable import disk_error, disk_full, fsync_dir, fsync_file, write_json
from llmc_cli.errors import ConfigError

VERSION = 2
MANIFEST = "manifest.json"
PARTIAL = ".partial-"
RECORD_DTYPE = np.dtype(
    [("flags", "u1"), ("source", "u1"), ("full_length", "<i4"), ("length", "<i4"), ("targets", "<i4"), ("line", "<i8")]
)
FILES = ("tokens.bin", "targets.bin", "offsets.npy", "records.npy")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<i4")


@contextmanager
def locked(root: Path, key: str) -> Iterator[None]:
    """Hold the entry's lock: one process prepares a key, the others wait and then reuse it."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = (root / f"{key}.lock").open("a")
    except OSError as exc:
        if disk_error(exc):
            raise disk_full(exc, "the prepared data cache", root) from exc
        raise ConfigError(
            f"The data cache {root} cannot be written ({exc.strerror or exc}).",
            hint="Point --data-cache (or LLMC_DATA_CACHE) at a writable folder.",
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_leftovers(root: Path, key: str) -> list[str]:
    """Remove partial entries of ``key`` left by killed preparations; return a notice for each.

    Called with the key's lock held, so no other process can be writing one of them.
    """
    notices = []
    for partial in sorted(root.glob(f"{key}{PARTIAL}*")):
        if partial.name.endswith(f"{PARTIAL}{os.getpid()}"):
            continue
        shutil.rmtree(partial, ignore_errors=True)
        notices.append(f"Removed an unfinished data cache ({partial.name}) left by an interrupted preparation.")
    return notices


class CorruptEntry(Exception):
    """An entry whose files do not match its manifest."""


@dataclass
class Entry:
    """An opened, verified cache entry."""

    path: Path
    manifest: dict[str, Any]
    offsets: np.ndarray
    dtype: np.dtype

    @property
    def key(self) -> str:
        return self.path.name

    @classmethod
    def open(cls, root: Path, key: str) -> Entry | None:
        """The entry for ``key``, or None if there is none.

        Raises:
            CorruptEntry: files missing, or of other sizes than the manifest records.
        """
        path = root / key
        if not path.exists():
            return None
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            sizes = manifest["files"]
            for name in FILES:
                if (path / name).stat().st_size != sizes[name]:
                    raise CorruptEntry(
                        f"{name} is {(path / name).stat().st_size} bytes, the manifest says {sizes[name]}"
                    )
            if manifest.get("version") != VERSION:
                raise CorruptEntry(f"written in format {manifest.get('version')}; this llmc reads format {VERSION}")
            offsets = np.load(path / "offsets.npy", mmap_mode="r")
            return cls(path, manifest, offsets, np.dtype(manifest["dtype"]))
        except CorruptEntry:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorruptEntry(str(exc)) from None

    def records(self) -> np.ndarray:
        return np.load(self.path / "records.npy")

    def reader(self) -> ExampleReader:
        return ExampleReader(self.path, self.dtype, self.offsets)


class ExampleReader:
    """Reads examples by index with ``os.pread``: nothing is mapped, so reading all of a large
    entry does not grow the process's resident memory. Safe to share across forked workers."""

    def __init__(self, path: Path, dtype: np.dtype, offsets: np.ndarray) -> None:
        self.path, self.dtype, self.offsets = path, dtype, offsets
        self._fds: tuple[int, int] | None = None
        self._pid = -1

    def _files(self) -> tuple[int, int]:
        if self._fds is None or self._pid != os.getpid():
            self._fds = (
                os.open(self.path / "tokens.bin", os.O_RDONLY),
                os.open(self.path / "targets.bin", os.O_RDONLY),
            )
            self._pid = os.getpid()
        return self._fds

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (int64) and target mask (uint8) of example ``index``."""
        tokens_fd, targets_fd = self._files()
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        size = self.dtype.itemsize
        ids = np.frombuffer(os.pread(tokens_fd, (end - start) * size, start * size), dtype=self.dtype)
        mask = np.frombuffer(os.pread(targets_fd, end - start, start), dtype=np.uint8)
        if len(ids) != end - start or len(mask) != end - start:
            raise OSError(f"{self.path}: the data cache is shorter than its index (was it changed?)")
        return ids.astype(np.int64), mask

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": None, "_pid": -1}

    def close(self) -> None:
        if self._fds is not None and self._pid == os.getpid():
            for fd in self._fds:
                os.close(fd)
        self._fds = None


class EntryWriter:
    """Writes one entry under a partial name; :meth:`commit` makes it visible, whole."""

    def __init__(self, root: Path, key: str, dtype: np.dtype) -> None:
        self.root, self.key, self.dtype = root, key, dtype
        self.partial = root / f"{key}{PARTIAL}{os.getpid()}"
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        self._tokens = (self.partial / "tokens.bin").open("wb")
        self._targets = (self.partial / "targets.bin").open("wb")
        self._records: list[np.ndarray] = []
        self._lengths = array("q")
        self.records = 0
        self.tokens = 0

    def add(self, source: int, lines: list[int], chunk: EncodedChunk) -> None:
        """Append a chunk of encoded records (in file order)."""
        records = np.zeros(len(lines), dtype=RECORD_DTYPE)
        records["flags"], records["source"], records["line"] = chunk.flags, source, lines
        records["length"], records["targets"], records["full_length"] = chunk.lengths, chunk.targets, chunk.full_lengths
        self._tokens.write(chunk.ids.astype(self.dtype, copy=False).tobytes())
        self._targets.write(chunk.mask.astype(np.uint8, copy=False).tobytes())
        self._lengths.extend(chunk.lengths[(chunk.flags & DROPPED) == 0].tolist())
        self._records.append(records)
        self.records += len(lines)
        self.tokens += len(chunk.ids)

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Finish the files, write the manifest last, and rename the entry into place."""
        for handle in (self._tokens, self._targets):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        lengths = np.frombuffer(self._lengths, dtype=np.int64) if len(self._lengths) else np.zeros(0, np.int64)
        np.save(self.partial / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        records = np.concatenate(self._records) if self._records else np.zeros(0, dtype=RECORD_DTYPE)
        np.save(self.partial / "records.npy", records)
        for name in ("offsets.npy", "records.npy"):
            fsync_file(self.partial / name)
        files = {name: (self.partial / name).stat().st_size for name in FILES}
        write_json(
            self.partial / MANIFEST,
            {**manifest, "version": VERSION, "dtype": self.dtype.str, "files": files, "created": time.time()},
        )
        target = self.root / self.key
        shutil.rmtree(target, ignore_errors=True)  # a corrupt entry being replaced
        os.replace(self.partial, target)
        fsync_dir(self.root)
        return target

    def abort(self) -> None:
        for handle in (self._tokens, self._targets):
            handle.close()
        shutil.rmtree(self.partial, ignore_errors=True)


def list_entries(root: Path) -> list[dict[str, Any]]:
    """Every entry under ``root`` with its manifest facts and size on disk (newest first)."""
    found = []
    for path in sorted(root.glob("*/" + MANIFEST)):
        entry = path.parent
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
        found.append({"key": entry.name, "path": str(entry), "bytes": _size(entry), **manifest})
    return sorted(found, key=lambda e: -e.get("created", 0))


def remove_entries(root: Path, keys: list[str] | None = None) -> int:
    """Remove the named entries (every cached thing when ``keys`` is None) and their partial
    leftovers; locks held by a running preparation are kept. Returns the bytes freed."""
    if not root.is_dir():
        return 0
    freed = 0
    for path in list(root.iterdir()):
        key = path.name.split(PARTIAL)[0].removesuffix(".lock")
        if keys is not None and key not in keys:
            continue
        if path.name.endswith(".lock"):
            if not _lock_held(path):
                path.unlink(missing_ok=True)
            continue
        freed += _size(path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return freed


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _lock_held(path: Path) -> bool:
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
