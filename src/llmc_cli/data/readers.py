"""Read records from .jsonl, .json, .csv and .parquet files, with the line of each record.

Every problem becomes a DataError naming the file, the line and the fix. Nothing here
knows about formats or tokenizers: a record is a line number and a dict.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmc_cli.errors import DataError

SUPPORTED = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Record:
    """One example as read: ``line`` is 1-based (for JSON arrays and parquet, the row number)."""

    line: int
    fields: dict[str, Any]


def read_records(path: Path, limit: int | None = None) -> list[Record]:
    """Read every record of a data file (the first ``limit`` if given).

    Raises:
        DataError: missing or empty file, unsupported extension, bad encoding or syntax.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"Data file {path} does not exist.", hint="Check the path passed to --data / --val-data.")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a data file.", hint=f"Pass one file ({', '.join(SUPPORTED)}).")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise DataError(
            f"{path}: unsupported file type '{suffix or '(none)'}'.",
            hint=f"Use one of {', '.join(SUPPORTED)}.",
        )
    if suffix == ".parquet":
        records = _read_parquet(path)
    else:
        text = _decode(path)
        if not text.strip():
            raise DataError(f"Data file {path} is empty.", hint="Add examples, one JSON object per line for .jsonl.")
        reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}[suffix]
        records = reader(path, text)
    if not records:
        raise DataError(f"Data file {path} holds no examples.", hint="Add at least one example.")
    return records[:limit] if limit else records


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {line} cannot be decoded.",
            hint=f"Re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > fixed{path.suffix}",
        ) from None


def _object_or_error(path: Path, line: int, value: Any) -> Record:
    if not isinstance(value, dict):
        raise DataError(
            f"{path}, line {line}: expected a JSON object with named fields, found {type(value).__name__}.",
            hint='Write each example as an object, e.g. {"question": "...", "answer": "..."}.',
        )
    return Record(line, value)


def _read_jsonl(path: Path, text: str) -> list[Record]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}, line {number}: invalid JSON ({exc.msg} at column {exc.colno}).",
                hint="Each line of a .jsonl file must be one complete JSON object.",
            ) from None
        records.append(_object_or_error(path, number, value))
    return records


def _read_json(path: Path, text: str) -> list[Record]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}, line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}).",
            hint="A .json data file holds one array of example objects.",
        ) from None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(
                f"{path}: expected an array of examples (or an object holding exactly one array).",
                hint='Write the file as [{"instruction": ..., "output": ...}, ...].',
            )
        value = lists[0]
    if not isinstance(value, list):
        raise DataError(f"{path}: expected an array of examples.", hint="Write the file as [{...}, {...}].")
    # Rows of a JSON array are numbered from 1; their text line is not tracked by json.
    return [_object_or_error(path, index, item) for index, item in enumerate(value, start=1)]


def _read_csv(path: Path, text: str) -> list[Record]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise DataError(f"{path}: the CSV file has no header row.", hint="Add a header such as question,answer.")
    records = []
    try:
        for row in reader:
            if None in row:
                raise DataError(
                    f"{path}, line {reader.line_num}: more values than header columns.",
                    hint="Quote fields that contain commas.",
                )
            if any(value for value in row.values()):
                records.append(Record(reader.line_num, {k: v if v is not None else "" for k, v in row.items()}))
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({exc}).", hint="Fix the quoting.") from None
    return records


def _read_parquet(path: Path) -> list[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading .parquet needs pyarrow, which is not installed.",
            hint="pip install 'llmc-cli[parquet]' (or pyarrow), or convert the file to .jsonl.",
        ) from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc}).", hint="Re-export the file.") from None
    return [Record(index, row) for index, row in enumerate(rows, start=1)]
