"""Pack examples into fixed-budget rows and collate rows into batches.

Packed rows carry ``position_ids`` that restart at 0 for every example. With no 2-D
attention mask, transformers' mask builder (``find_packed_sequence_indices``) turns those
restarts into a block-diagonal causal mask, so no token attends across examples. It does
so only without a KV cache: the forward pass must get ``use_cache=False`` (engine/loss.py
does). The tests check packed logits against each example run alone.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

import torch

from llmc_cli.data.tokenize import IGNORE, Encoded


@dataclass(frozen=True)
class Row:
    """One training sequence: one example, or several packed ones."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    examples: int


def pack(encoded: list[Encoded], max_length: int, seed: int) -> list[Row]:
    """Best-fit-decreasing packing into rows of at most ``max_length`` tokens.

    Rows are returned in a seeded random order; each example appears exactly once.
    """
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i].input_ids), i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin index), kept sorted
    for index in order:
        length = len(encoded[index].input_ids)
        slot = bisect.bisect_left(free, (length, -1))
        if slot < len(free):
            space, bin_index = free.pop(slot)
        else:
            space, bin_index = max_length, len(bins)
            bins.append([])
        bins[bin_index].append(index)
        if space - length > 0:
            bisect.insort(free, (space - length, bin_index))
    random.Random(seed).shuffle(bins)
    return [_join([encoded[i] for i in members]) for members in bins]


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
    """Pad rows to the longest in the batch.

    Packed batches get ``position_ids`` (padding forms its own segment starting at 0) and
    no attention mask; unpacked batches get a 2-D attention mask.
    """

    def __init__(self, pad_id: int, packed: bool) -> None:
        self.pad_id = pad_id
        self.packed = packed

    def __call__(self, rows: list[Row]) -> dict:
        width = max(len(row.input_ids) for row in rows)
        batch = {
            "input_ids": torch.tensor([r.input_ids + [self.pad_id] * (width - len(r.input_ids)) for r in rows]),
            "labels": torch.tensor([r.labels + [IGNORE] * (width - len(r.labels)) for r in rows]),
        }
        if self.packed:
            batch["position_ids"] = torch.tensor(
                [r.position_ids + list(range(width - len(r.position_ids))) for r in rows]
            )
        else:
            batch["attention_mask"] = torch.tensor(
                [[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in rows]
            )
        # Plain ints stay on the host when accelerate moves the batch: reading them never syncs.
        batch["n_tokens"] = sum(len(r.input_ids) for r in rows)
        batch["n_examples"] = sum(r.examples for r in rows)
        return batch
