"""From data files to training rows, in two stages.

1. :func:`load_examples` reads, validates and splits the data. It needs no tokenizer and
   no model, so bad data is reported before anything heavy is loaded.
2. :func:`build_rows` renders, tokenises, masks and packs with the model's tokenizer.

Validation split (when no --val-data): none below 10 examples; otherwise 10% up to 2,000
examples and 5% above, at least 1 and at most 500, drawn with the run's seed.
"""

from __future__ import annotations

import hashlib
import random
from array import array
from dataclasses import dataclass, field

from llmc_cli.config.schema import DataSettings
from llmc_cli.data.formats import Example, normalise
from llmc_cli.data.readers import read_records
from llmc_cli.data.tokenize import EncodeReport, encode

MIN_FOR_SPLIT = 10
MAX_VAL = 500


@dataclass(frozen=True)
class LoadedData:
    """Validated examples, split into train and validation."""

    format: str
    train: list[Example]
    val: list[Example]
    val_source: str  # "file:PATH", "split" or "none"
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Rows:
    """Token rows ready for a loader, with what encoding did to the examples."""

    train: list
    val: list
    train_report: EncodeReport
    val_report: EncodeReport


def validation_size(n_examples: int) -> int:
    """How many examples to hold out of a dataset of ``n_examples`` for validation."""
    if n_examples < MIN_FOR_SPLIT:
        return 0
    fraction = 0.1 if n_examples <= 2000 else 0.05
    return min(MAX_VAL, max(1, round(n_examples * fraction)))


def load_examples(settings: DataSettings, seed: int) -> LoadedData:
    """Read and validate --data (and --val-data); hold out a validation split if needed."""
    assert settings.data is not None, "the caller checks that --data is set"
    fmt, examples = normalise(settings.data, read_records(settings.data, settings.limit), settings.format)
    notes = []
    if settings.val_data is not None:
        _, val = normalise(settings.val_data, read_records(settings.val_data), settings.format)
        return LoadedData(fmt, examples, val, f"file:{settings.val_data}")
    size = validation_size(len(examples))
    if size == 0:
        notes.append(
            f"Only {len(examples)} examples: no validation split is held out, so there is no eval loss. "
            "Pass --val-data or use more data."
        )
        return LoadedData(fmt, examples, [], "none", notes)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:size])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    val = [ex for i, ex in enumerate(examples) if i in held]
    return LoadedData(fmt, train, val, "split", notes)


def build_rows(tokenizer, loaded: LoadedData, settings: DataSettings, seed: int) -> Rows:
    """Tokenise both splits and pack them (or keep one example per row)."""
    from llmc_cli.data.packing import pack, unpacked

    options = {"overlong": settings.overlong, "train_on_prompt": settings.train_on_prompt}
    train_encoded, train_report = encode(tokenizer, loaded.train, settings.max_length, **options)
    val_encoded, val_report = encode(tokenizer, loaded.val, settings.max_length, **options)
    if settings.packing:
        return Rows(
            pack(train_encoded, settings.max_length, seed),
            pack(val_encoded, settings.max_length, seed),
            train_report,
            val_report,
        )
    return Rows(unpacked(train_encoded), unpacked(val_encoded), train_report, val_report)


def rows_fingerprint(rows: list) -> str:
    """sha256 of the token ids and labels of ``rows`` in order: what training reads, exactly."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(array("i", row.input_ids).tobytes())
        digest.update(array("i", row.labels).tobytes())
    return digest.hexdigest()
