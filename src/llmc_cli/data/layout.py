"""Split a prepared entry into train and validation rows for one seed, and pack them.

Validation split (when no --val-data): none below 10 examples; otherwise 10% up to 2,000
examples and 5% above, at least 1 and at most 500, drawn with the run's seed from the
records read (before tokenisation drops any). Only the record count, the seed and one
integer per record are needed, never the examples themselves.

A layout is a few integer arrays saved under the entry (``layouts/seed<S>-<packed|single>/``),
so a resumed run, a rollback, a tuning trial or another process reads the same rows in the
same order without packing again.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmc_cli.data.cache import Entry
from llmc_cli.data.packing import pack_layout
from llmc_cli.data.tokenize import (
    DROPPED,
    DROPPED_NO_TARGET,
    DROPPED_TOO_LONG,
    MAX_LINES_KEPT,
    NOT_PREFIX_STABLE,
    TRUNCATED,
    EncodeReport,
    length_stats,
)
from llmc_cli.durable import staged_dir, write_json

MIN_FOR_SPLIT = 10
MAX_VAL = 500
ARRAYS = ("train_offsets", "train_members", "val_offsets", "val_members")


def validation_size(n_examples: int) -> int:
    """How many examples to hold out of a dataset of ``n_examples`` for validation."""
    if n_examples < MIN_FOR_SPLIT:
        return 0
    fraction = 0.1 if n_examples <= 2000 else 0.05
    return min(MAX_VAL, max(1, round(n_examples * fraction)))


def held_out(n_records: int, seed: int) -> np.ndarray:
    """Indices of the records held out for validation (the first ``size`` of a seeded shuffle)."""
    size = validation_size(n_records)
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    order = list(range(n_records))
    random.Random(seed).shuffle(order)
    return np.array(order[:size], dtype=np.int64)


def split_note(n_records: int) -> str | None:
    if validation_size(n_records) == 0:
        return (
            f"Only {n_records} examples: no validation split is held out, so there is no eval loss. "
            "Pass --val-data or use more data."
        )
    return None


@dataclass(frozen=True)
class Layout:
    """Rows of each split: row ``r`` holds the entry's examples ``members[offsets[r]:offsets[r+1]]``."""

    name: str
    train_offsets: np.ndarray
    train_members: np.ndarray
    val_offsets: np.ndarray
    val_members: np.ndarray
    train_report: EncodeReport
    val_report: EncodeReport
    notes: list[str]


def layout_name(seed: int, packing: bool) -> str:
    return f"seed{seed}-{'packed' if packing else 'single'}"


def load_or_build(entry: Entry, seed: int, packing: bool, max_length: int) -> Layout:
    """The entry's layout for ``seed`` and ``packing``, built and saved the first time."""
    name = layout_name(seed, packing)
    folder = entry.path / "layouts" / name
    if (folder / "layout.json").is_file():
        try:
            return _load(folder, name)
        except (OSError, ValueError, KeyError):
            pass  # rebuilt below
    layout = build(entry, seed, packing, max_length)
    try:
        with staged_dir(folder) as staging:
            for array_name in ARRAYS:
                np.save(staging / f"{array_name}.npy", getattr(layout, array_name))
            facts = {"train": vars(layout.train_report), "val": vars(layout.val_report), "notes": layout.notes}
            write_json(staging / "layout.json", facts, atomic=False)
    except OSError:
        pass  # a read-only or full cache still trains; the layout is rebuilt next time
    return layout


def _load(folder: Path, name: str) -> Layout:
    facts = json.loads((folder / "layout.json").read_text(encoding="utf-8"))
    arrays = {array_name: np.load(folder / f"{array_name}.npy") for array_name in ARRAYS}
    return Layout(name, **arrays, train_report=EncodeReport(**facts["train"]), val_report=EncodeReport(**facts["val"]),
                  notes=list(facts["notes"]))  # fmt: skip


def build(entry: Entry, seed: int, packing: bool, max_length: int) -> Layout:
    """Split the entry's records with ``seed`` and pack (or not) each split."""
    records = entry.records()
    kept = (records["flags"] & DROPPED) == 0
    example_of = np.cumsum(kept) - 1  # index among kept examples, for kept records
    from_data = records["source"] == 0
    n_data = int(from_data.sum())
    notes = []
    if entry.manifest.get("val_source", "split") == "split":
        is_val = np.zeros(len(records), dtype=bool)
        is_val[held_out(n_data, seed)] = True  # records of --data come first, in file order
        if (note := split_note(n_data)) is not None:
            notes.append(note)
    else:
        is_val = ~from_data
    lengths = records["length"][kept].astype(np.int64)
    splits = {}
    for split, chosen in (("train", from_data & ~is_val), ("val", is_val)):
        ids = example_of[chosen & kept]
        if packing:
            offsets, members = pack_layout(lengths[ids], max_length, seed)
            members = ids[members]
        else:
            offsets, members = np.arange(len(ids) + 1, dtype=np.int64), ids.astype(np.int64)
        splits[split] = (offsets.astype(np.int64), members.astype(np.int64), report(records[chosen]))
    (train_offsets, train_members, train_report), (val_offsets, val_members, val_report) = (
        splits["train"],
        splits["val"],
    )
    return Layout(
        layout_name(seed, packing),
        train_offsets,
        train_members,
        val_offsets,
        val_members,
        train_report,
        val_report,
        notes,
    )


def report(records: np.ndarray) -> EncodeReport:
    """What encoding did to ``records`` (rows of an entry's records.npy)."""
    flags = records["flags"]
    kept = (flags & DROPPED) == 0
    return EncodeReport(
        examples=len(records),
        kept=int(kept.sum()),
        truncated=int(((flags & TRUNCATED) > 0).sum()),
        dropped_too_long=int(((flags & DROPPED_TOO_LONG) > 0).sum()),
        dropped_no_target=int(((flags & DROPPED_NO_TARGET) > 0).sum()),
        not_prefix_stable=int(((flags & NOT_PREFIX_STABLE) > 0).sum()),
        tokens=int(records["length"][kept].sum()),
        target_tokens=int(records["targets"][kept].sum()),
        longest=int(records["length"][kept].max()) if kept.any() else 0,
        lines_dropped=[int(line) for line in records["line"][~kept][:MAX_LINES_KEPT]],
        lengths=length_stats(records["full_length"]),
    )
