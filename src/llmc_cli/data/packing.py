"""Pack examples into fixed-budget rows and collate rows into batches.

Packed rows carry ``position_ids`` that restart at 0 for every example. With no 2-D
attention mask, transformers' mask builder (``find_packed_sequence_indices``) turns those
restarts into a block-diagonal causal mask, so no token attends across examples. It does
so only without a KV cache: the forward pass must get ``use_cache=False`` (engine/loss.py
does). The tests check packed logits against each example run alone.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from llmc_cli.data.tokenize import IGNORE, Encoded


@dataclass(frozen=True)
class Row:
    """One training sequence: one example, or several packed ones."""

    input_ids: Sequence[int]  # lists in memory; int64 arrays when read from the data cache
    labels: Sequence[int]
    position_ids: Sequence[int]
    examples: int


def pack(encoded: list[Encoded], max_length: int, seed: int) -> list[Row]:
    """Best-fit-decreasing packing into rows of at most ``max_length`` tokens.

    Rows are returned in a seeded random order; each example appears exactly once.
    """
    offsets, members = pack_layout(np.array([len(e.input_ids) for e in encoded], dtype=np.int64), max_length, seed)
    return [_join([encoded[i] for i in members[a:b]]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def pack_layout(lengths: np.ndarray, max_length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-fit-decreasing packing of examples of ``lengths``, as flat arrays.

    Examples are placed longest first (ties by index), each into the open row with the least
    space that still fits it (ties: the oldest row), else a new row; rows are then shuffled
    with ``seed``. Returns ``(offsets, members)``: row ``r`` holds the examples
    ``members[offsets[r]:offsets[r + 1]]`` in the order they were placed. Memory is a few
    integers per example, so millions of examples pack in seconds.
    """
    order = np.argsort(-lengths, kind="stable")
    row_of = np.empty(len(lengths), dtype=np.int64)
    spaces: list[int] = []  # distinct free spaces of open rows, sorted
    rows_with: dict[int, list[int]] = {}  # free space -> heap of row indices
    n_rows = 0
    for index, length in zip(order.tolist(), lengths[order].tolist(), strict=True):
        slot = bisect.bisect_left(spaces, length)
        if slot < len(spaces):
            space = spaces[slot]
            heap = rows_with[space]
            row = heapq.heappop(heap)
            if not heap:
                del rows_with[space], spaces[slot]
        else:
            space, row = max_length, n_rows
            n_rows += 1
        row_of[index] = row
        left = space - length
        if left > 0:
            if left not in rows_with:
                rows_with[left] = []
                bisect.insort(spaces, left)
            heapq.heappush(rows_with[left], row)
    shuffled = list(range(n_rows))
    random.Random(seed).shuffle(shuffled)
    rank = np.empty(n_rows, dtype=np.int64)
    rank[shuffled] = np.arange(n_rows)
    placed = np.empty(len(lengths), dtype=np.int64)
    placed[order] = np.arange(len(lengths))
    members = np.lexsort((placed, rank[row_of]))
    counts = np.bincount(rank[row_of], minlength=n_rows)
    return np.concatenate([[0], np.cumsum(counts)]), members


def unpacked(encoded: list[Encoded]) -> list[Row]:
    """One row per example (used when packing is off)."""
    return [_join([item]) for item in encoded]


def _join(items: list[Encoded]) -> Row:
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for item in items:
        ids += item.input_ids
        labels += item.labels
        positions += range(len(item.input_ids))
    return Row(ids, labels, positions, len(items))


class Collator:
    """Pad rows to the longest in the batch, rounded up to a multiple of ``multiple`` (never past
    ``limit``, the configured max_length, where the longest row is within it).

    Packed batches get ``position_ids`` (padding forms its own segment starting at 0) and
    no attention mask; unpacked batches get a 2-D attention mask.

    Why round: every new batch width is a new shape for oneDNN, which builds and caches kernels
    per shape, and its buffers left between freed activations keep glibc's heap from reusing
    them. In bf16 on a CPU (mini model, 40 steps of widths 150-512) peak RSS grew without end,
    1015 -> 2453 MB, of which malloc_trim gave back 700 MB; with widths rounded to 64 it stopped at
    1449 MB (the fp32 run's plateau was 1452 MB), and steps took 0.82 s instead of 0.85 s.
    """

    def __init__(self, pad_id: int, packed: bool, multiple: int = 1, limit: int | None = None) -> None:
        self.pad_id = pad_id
        self.packed = packed
        self.multiple = max(1, multiple)
        self.limit = limit

    def width(self, longest: int) -> int:
        rounded = -(-longest // self.multiple) * self.multiple
        return rounded if self.limit is None else max(longest, min(rounded, self.limit))

    def __call__(self, rows: list[Row]) -> dict:
        width = self.width(max(len(row.input_ids) for row in rows))
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        labels = np.full((len(rows), width), IGNORE, dtype=np.int64)
        positions = np.tile(np.arange(width, dtype=np.int64), (len(rows), 1))
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            n = len(row.input_ids)
            ids[i, :n], labels[i, :n], mask[i, :n] = row.input_ids, row.labels, 1
            positions[i, :n] = row.position_ids
            positions[i, n:] = np.arange(width - n)
        batch = {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels)}
        if self.packed:
            batch["position_ids"] = torch.from_numpy(positions)
        else:
            batch["attention_mask"] = torch.from_numpy(mask)
        # Plain ints stay on the host when accelerate moves the batch: reading them never syncs.
        batch["n_tokens"] = sum(len(r.input_ids) for r in rows)
        batch["n_examples"] = sum(r.examples for r in rows)
        return batch
