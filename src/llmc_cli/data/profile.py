"""Token lengths of a dataset before it is prepared: a sample, templated and tokenised as training will.

The plan's data rules (optimize/rules.py) need the lengths the model will see (chat template
and special tokens included) before anything is cached, because ``max_length`` is one of the
values they choose and the cache is keyed by it. Up to :data:`SAMPLE` records, spread evenly
over the file, are rendered and tokenised exactly as data/prepare.py would (nothing truncated);
with fewer records in the file the profile is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmc_cli.data.formats import Normaliser
from llmc_cli.data.packing import pack_layout
from llmc_cli.data.readers import iter_records
from llmc_cli.data.tokenize import encode_arrays, length_stats

SAMPLE = 2000
UNLIMITED = 2**31 - 1


@dataclass(frozen=True)
class LengthProfile:
    """Token lengths of the training examples (templated, before truncation), from ``sampled`` of ``records``."""

    records: int
    sampled: int
    lengths: dict[str, int]  # p50 / p95 / p99 / max
    mean_tokens: float
    mean_targets: float  # tokens in the loss, per example
    # The sampled lengths themselves (not in to_dict: config.json keeps the summary only).
    _lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False, compare=False)

    @property
    def exact(self) -> bool:
        return self.sampled >= self.records

    def target_tokens(self, examples: int) -> int:
        """Estimated tokens in the loss over ``examples`` examples."""
        return round(self.mean_targets * examples)

    def share_longer(self, max_length: int) -> float:
        """Share of the sampled examples longer than ``max_length`` tokens."""
        return float(np.mean(self._lengths > max_length)) if len(self._lengths) else 0.0

    def rows(self, examples: int, max_length: int, packing: bool, seed: int) -> int:
        """Estimated training rows of ``examples`` examples: packed as data/packing.py packs them, or one each."""
        if not packing or not len(self._lengths):
            return examples
        offsets, _ = pack_layout(np.minimum(self._lengths, max_length), max_length, seed)
        return max(1, round((len(offsets) - 1) * examples / len(self._lengths)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "sampled": self.sampled,
            "exact": self.exact,
            "lengths": self.lengths,
            "mean_tokens": round(self.mean_tokens, 1),
            "mean_targets": round(self.mean_targets, 1),
        }


def profile_lengths(
    path: Path, fmt: str, records: int, tokenizer, train_on_prompt: bool, limit: int | None = None
) -> LengthProfile:
    """Template and tokenise up to :data:`SAMPLE` of the first ``records`` records of ``path``, evenly spaced.

    ``fmt`` is the format the scan detected; the file was validated by that scan.
    """
    checker = Normaliser(path, fmt)
    examples = []
    for index, record in enumerate(iter_records(path, limit)):
        picked = records <= SAMPLE or index == 0 or index * SAMPLE // records != (index - 1) * SAMPLE // records
        if picked and (example := checker.feed(record)) is not None:
            examples.append(example)
    lengths, targets = [], []
    for start in range(0, len(examples), 256):
        for outcome in encode_arrays(tokenizer, examples[start : start + 256], UNLIMITED, "truncate", train_on_prompt):
            lengths.append(outcome.full_length)
            targets.append(int(outcome.mask.sum()) if outcome.mask is not None else 0)
    array = np.array(lengths, dtype=np.int64)
    return LengthProfile(
        records=records,
        sampled=len(examples),
        lengths=length_stats(array),
        mean_tokens=float(array.mean()) if len(array) else 0.0,
        mean_targets=float(np.mean(targets)) if targets else 0.0,
        _lengths=array,
    )
