"""Validate the data files before anything heavy is loaded, and count their examples.

A scan streams every record through the format checks (line-numbered errors, all of a
file's problems at once) in constant memory and needs no tokenizer: bad data is reported
before the model loads. Its result is remembered in the data cache by the file's content
fingerprint, so a second run over an unchanged file reads nothing again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmc_cli.config.schema import DataSettings
from llmc_cli.data.fingerprint import file_digest
from llmc_cli.data.formats import Normaliser
from llmc_cli.data.layout import split_note, validation_size
from llmc_cli.data.readers import check_file, iter_records
from llmc_cli.durable import write_json

SCANS = "scans"
VERSION = 1


@dataclass(frozen=True)
class DataScan:
    """What a run needs to know about its data before tokenising it."""

    format: str
    records: int  # read from --data (after --limit)
    val_records: int  # read from --val-data, or held out of --data
    val_source: str  # "file:PATH", "split" or "none"
    data_digest: str
    val_digest: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def train_records(self) -> int:
        return self.records - (self.val_records if self.val_source == "split" else 0)


def scan(settings: DataSettings, root: Path) -> DataScan:
    """Validate --data (and --val-data) and count their records, or reuse a remembered scan.

    Raises:
        DataError: the first unreadable line, or every record that does not fit the format.
    """
    assert settings.data is not None, "the caller checks that --data is set"
    for path in (settings.data, settings.val_data):
        if path is not None:
            check_file(path)
    data_digest = file_digest(settings.data, root)
    val_digest = file_digest(settings.val_data, root) if settings.val_data is not None else None
    key = hashlib.sha256(
        json.dumps([VERSION, data_digest, val_digest, settings.format, settings.limit]).encode()
    ).hexdigest()[:24]
    memo = root / SCANS / f"{key}.json"
    try:
        return _with_paths(DataScan(**json.loads(memo.read_text(encoding="utf-8"))), settings)
    except (OSError, ValueError, TypeError):
        pass
    fmt, records = _check(settings.data, settings.format, settings.limit)
    if settings.val_data is not None:
        _, val_records = _check(settings.val_data, settings.format)
        result = DataScan(fmt, records, val_records, "file", data_digest, val_digest)
    else:
        size = validation_size(records)
        notes = [note] if (note := split_note(records)) else []
        result = DataScan(fmt, records, size, "split" if size else "none", data_digest, None, notes)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_json(memo, asdict(result))
    except OSError:
        pass  # only a memo
    return _with_paths(result, settings)


def _with_paths(result: DataScan, settings: DataSettings) -> DataScan:
    if result.val_source.startswith("file"):
        return DataScan(**{**asdict(result), "val_source": f"file:{settings.val_data}"})
    return result


def _check(path: Path, forced: str, limit: int | None = None) -> tuple[str, int]:
    checker = Normaliser(path, forced)
    for record in iter_records(path, limit):
        checker.feed(record)
    return checker.finish(), checker.records
