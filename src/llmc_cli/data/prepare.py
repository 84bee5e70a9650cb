"""Prepare a run's data once: stream, render, tokenise and mask on every core into the cache.

``prepare`` is what ``llmc train`` (and ``llmc prepare``) call after the scan. The cache key
is a fingerprint of the data files' contents, the tokenizer (vocabulary, normaliser, special
tokens, chat template and library versions), the format, --limit, --max-length, --overlong
and --train-on-prompt: anything that changes a token gives a new entry, anything else (the
seed, packing, batch size, the number of preparation processes) reuses it. The seed and
packing choose a layout inside the entry (data/layout.py).

Files with at least ``PARALLEL_FROM`` records are encoded by a pool of processes (one per
core by default, data/workers.py); the parent streams records to them in chunks, one chunk
per worker in flight, and writes their results in file order, so memory stays flat whatever the
file's size and the result does not depend on the number of processes. Starting a worker
costs about 4 s (it imports transformers), and one process already tokenises on two threads,
so on 2 cores two workers encode a 1,024-example chunk in 0.17 s against 0.26 s in-process:
the pool pays off from about 50 chunks, hence ``PARALLEL_FROM``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from llmc_cli.config.schema import DataSettings
from llmc_cli.data.cache import VERSION, CorruptEntry, Entry, EntryWriter, locked, remove_leftovers, token_dtype
from llmc_cli.data.dataset import CachedRows, Rows
from llmc_cli.data.fingerprint import tokenizer_digest
from llmc_cli.data.formats import Example, Normaliser
from llmc_cli.data.layout import load_or_build
from llmc_cli.data.readers import iter_records
from llmc_cli.data.scan import DataScan
from llmc_cli.data.workers import Encoder
from llmc_cli.durable import disk_errors
from llmc_cli.errors import DataError, RunInterrupted

CHUNK = 1024
PARALLEL_FROM = 50_000
PROGRESS_EVERY_S = 2.0

# progress(stage, done, total, elapsed_s): called every PROGRESS_EVERY_S and once at the end.
Progress = Callable[[str, int, int, float], None]


def cache_key(settings: DataSettings, scan: DataScan, tokenizer) -> str:
    """The entry key: everything that changes the tokens of any example."""
    inputs = {
        "version": VERSION,
        "data": scan.data_digest,
        "val_data": scan.val_digest,
        "format": scan.format,
        "limit": settings.limit,
        "tokenizer": tokenizer_digest(tokenizer),
        "max_length": settings.max_length,
        "overlong": settings.overlong,
        "train_on_prompt": settings.train_on_prompt,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prepare(
    settings: DataSettings,
    tokenizer,
    scan: DataScan,
    seed: int,
    root: Path,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Rows:
    """The rows of a run, from the cache (built first if this key has no entry).

    Raises:
        DataError: the data changed since the scan; DiskFull: the cache's disk filled up;
        RunInterrupted: ``should_stop()`` turned true, or SIGTERM arrived (the partial entry is removed).
    """
    key = cache_key(settings, scan, tokenizer)
    started = time.monotonic()
    with locked(root, key):
        notes = remove_leftovers(root, key)
        try:
            entry = Entry.open(root, key)
        except CorruptEntry as exc:
            notes.append(f"The data cache {root / key} was unusable ({exc}); it was rebuilt.")
            shutil.rmtree(root / key, ignore_errors=True)
            entry = None
        reused = entry is not None
        if entry is None:
            with disk_errors("the prepared data cache", root):
                _build(root, key, settings, tokenizer, scan, workers or default_workers(), progress, should_stop)
            entry = Entry.open(root, key)
            assert entry is not None
        rows = open_rows(entry, seed, settings, reused=reused)
    return replace(rows, notes=notes + rows.notes, seconds=time.monotonic() - started)


def open_rows(entry: Entry, seed: int, settings: DataSettings, reused: bool = True) -> Rows:
    """The rows of an existing entry for ``seed`` and the packing setting (the layout built if missing)."""
    layout = load_or_build(entry, seed, settings.packing, settings.max_length)
    reader = entry.reader()
    return Rows(
        train=CachedRows(reader, layout.train_offsets, layout.train_members),
        val=CachedRows(reader, layout.val_offsets, layout.val_members),
        train_report=layout.train_report,
        val_report=layout.val_report,
        fingerprint=f"{entry.key}/{layout.name}",
        notes=list(layout.notes),
        cache_path=str(entry.path),
        reused=reused,
    )


def _build(
    root: Path, key: str, settings: DataSettings, tokenizer, scan: DataScan, workers: int, progress, should_stop
) -> None:
    dtype = token_dtype(len(tokenizer))
    sources = [(0, settings.data, settings.limit)]
    if settings.val_data is not None:
        sources.append((1, settings.val_data, None))
    total = scan.records + (scan.val_records if settings.val_data is not None else 0)
    workers = max(1, min(workers, 64)) if total >= PARALLEL_FROM else 1
    options = (settings.max_length, settings.overlong, settings.train_on_prompt, dtype.str)
    started = time.monotonic()
    writer = EntryWriter(root, key, dtype)
    try:
        with Encoder(tokenizer, options, workers) as encoder, _terminate_raises():
            last, reported = started, 0
            for source, path, limit in sources:
                for lines, outcomes in encoder.run(_chunks(path, scan.format, limit)):
                    writer.add(source, lines, outcomes)
                    if should_stop is not None and should_stop():
                        raise _stopped()
                    now = time.monotonic()
                    if progress is not None and now - last >= PROGRESS_EVERY_S:
                        progress("tokenise", writer.records, total, now - started)
                        last, reported = now, writer.records
        if writer.records != total:
            raise DataError(
                f"{settings.data} changed while it was being prepared ({writer.records} records now, "
                f"{total} when it was checked).",
                hint="Wait until the file is written completely, then run again.",
            )
        seconds = time.monotonic() - started
        if progress is not None and reported != writer.records:
            progress("tokenise", writer.records, total, seconds)
        writer.commit(
            {
                "data": str(settings.data),
                "val_data": str(settings.val_data) if settings.val_data else None,
                "val_source": "file" if settings.val_data is not None else "split",
                "format": scan.format,
                "tokenizer": getattr(tokenizer, "name_or_path", ""),
                "max_length": settings.max_length,
                "overlong": settings.overlong,
                "train_on_prompt": settings.train_on_prompt,
                "records": writer.records,
                "tokens": writer.tokens,
                "workers": workers,
                "seconds": round(seconds, 3),
            }
        )
    except KeyboardInterrupt:  # Ctrl-C: the same clean stop and message as SIGTERM
        writer.abort()
        raise _stopped() from None
    except BaseException:
        writer.abort()
        raise


def _stopped() -> RunInterrupted:
    return RunInterrupted(
        "Stopped while preparing the data: nothing was trained, and the unfinished cache entry was removed.",
        hint="Run the same command again to prepare from the start.",
    )


@contextmanager
def _terminate_raises() -> Iterator[None]:
    """SIGTERM stops a preparation like Ctrl-C does, so the partial entry and the workers are cleaned up.

    Only where SIGTERM still has its default action (a training run installs its own handler
    and passes ``should_stop`` instead)."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def raise_stopped(signum, frame):
        raise _stopped()

    signal.signal(signal.SIGTERM, raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _chunks(path: Path, fmt: str, limit: int | None) -> Iterator[tuple[list[int], list[Example]]]:
    checker = Normaliser(path, fmt)
    lines: list[int] = []
    examples: list[Example] = []
    for record in iter_records(path, limit):
        example = checker.feed(record)
        if example is None:
            checker.finish()  # raises: the file changed since it was checked
        lines.append(record.line)
        examples.append(example)  # type: ignore[arg-type]
        if len(examples) == CHUNK:
            yield lines, examples
            lines, examples = [], []
    if examples:
        yield lines, examples
