"""The rows a run trains on, read from the prepared-data cache one row at a time.

:class:`Rows` is what the engine gets from data/prepare.py: a training and a validation
:class:`CachedRows` (torch datasets over a cache entry and a layout), what encoding did to
each split, and the fingerprint that a checkpoint records (the cache key plus the layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmc_cli.data.cache import ExampleReader
from llmc_cli.data.layout import validation_size  # noqa: F401 - re-exported: the split rule's public name
from llmc_cli.data.packing import Row
from llmc_cli.data.tokenize import IGNORE, EncodeReport


class CachedRows:
    """A map-style dataset: row ``r`` joins the examples ``members[offsets[r]:offsets[r+1]]``."""

    def __init__(self, reader: ExampleReader, offsets: np.ndarray, members: np.ndarray) -> None:
        self.reader, self.offsets, self.members = reader, offsets, members

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> Row:
        if not 0 <= index < len(self):
            raise IndexError(index)
        examples = self.members[self.offsets[index] : self.offsets[index + 1]]
        ids, masks = zip(*(self.reader.example(int(e)) for e in examples), strict=True)
        input_ids = np.concatenate(ids)
        labels = np.where(np.concatenate(masks).astype(bool), input_ids, IGNORE)
        positions = np.concatenate([np.arange(len(part), dtype=np.int64) for part in ids])
        return Row(input_ids, labels, positions, len(examples))


@dataclass(frozen=True)
class Rows:
    """Token rows ready for a loader, with what encoding did to the examples."""

    train: CachedRows
    val: CachedRows
    train_report: EncodeReport
    val_report: EncodeReport
    fingerprint: str
    notes: list[str] = field(default_factory=list)
    cache_path: str = ""
    reused: bool = False  # read from an existing cache entry
    seconds: float = 0.0  # preparing (or opening) the entry
