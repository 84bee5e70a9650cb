"""Stream records from .jsonl, .json, .csv and .parquet files (optionally .gz or .zst), with the line of each.

Records are yielded one at a time, so a file of any size is read in bounded memory and a
problem is reported as soon as its line is reached. Every problem becomes a DataError
naming the file, the line and the fix. Nothing here knows about formats or tokenizers: a
record is a line number and a dict.

A ``.json`` array is parsed whole (JSON has no line structure to stream by): write large
datasets as ``.jsonl``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from llmc_cli.errors import DataError

SUPPORTED = (".jsonl", ".json", ".csv", ".parquet")
COMPRESSED = (".gz", ".zst")
PARQUET_BATCH = 4096


@dataclass(frozen=True)
class Record:
    """One example as read: ``line`` is 1-based (for JSON arrays and parquet, the row number)."""

    line: int
    fields: dict[str, Any]


def kind_of(path: Path) -> tuple[str, str | None]:
    """The data suffix and the compression suffix of ``path``: ``a.jsonl.gz`` -> (".jsonl", ".gz")."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSED else None
    return (suffixes[-1] if suffixes else ""), compression


def check_file(path: Path) -> tuple[str, str | None]:
    """Refuse a missing, directory or unsupported path; return its :func:`kind_of`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Data file {path} does not exist.", hint="Check the path passed to --data / --val-data.")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a data file.", hint=f"Pass one file ({', '.join(SUPPORTED)}).")
    suffix, compression = kind_of(path)
    if suffix not in SUPPORTED:
        raise DataError(
            f"{path}: unsupported file type '{suffix or '(none)'}'.",
            hint=f"Use one of {', '.join(SUPPORTED)}, optionally compressed as .gz or .zst.",
        )
    if suffix == ".parquet" and compression:
        raise DataError(f"{path}: parquet files are compressed inside; do not wrap them in {compression}.")
    return suffix, compression


def read_records(path: Path, limit: int | None = None) -> list[Record]:
    """Every record of a data file (the first ``limit`` if given), as a list: for small files and tests."""
    return list(iter_records(path, limit))


def iter_records(path: Path, limit: int | None = None) -> Iterator[Record]:
    """Yield the records of a data file in order, the first ``limit`` if given.

    Raises:
        DataError: missing or empty file, unsupported extension, bad encoding or syntax
            (raised when the reader reaches the bad line).
    """
    path = Path(path)
    suffix, compression = check_file(path)
    if suffix == ".parquet":
        records = _read_parquet(path)
    else:
        reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}[suffix]
        records = reader(path, compression)
    count = 0
    for record in records:
        yield record
        count += 1
        if limit and count >= limit:
            return
    if count == 0:
        raise DataError(f"Data file {path} holds no examples.", hint="Add at least one example.")


def _open_binary(path: Path, compression: str | None) -> IO[bytes]:
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".zst":
        try:
            import zstandard
        except ImportError:
            raise DataError(
                f"{path}: reading .zst files needs the zstandard package, which is not installed.",
                hint="pip install zstandard, or decompress the file (zstd -d).",
            ) from None
        return zstandard.ZstdDecompressor().stream_reader(path.open("rb"), closefd=True)
    return path.open("rb")


def _lines(path: Path, compression: str | None) -> Iterator[tuple[int, str]]:
    """Decoded lines with their 1-based numbers; a UTF-8 BOM on the first line is dropped."""
    try:
        with _open_binary(path, compression) as raw:
            for number, data in enumerate(io.BufferedReader(raw, 1 << 20) if compression else raw, start=1):
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} on line {number} cannot be decoded.",
                        hint=f"Re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > fixed{path.suffix}",
                    ) from None
                yield number, (text.removeprefix("\ufeff") if number == 1 else text)
    except DataError:
        raise
    except Exception as exc:  # gzip/zstd/OS errors: a damaged or truncated file
        raise DataError(f"{path}: cannot be read ({exc}).", hint="Check the file (a truncated download?).") from None


def _empty(path: Path) -> DataError:
    return DataError(f"Data file {path} is empty.", hint="Add examples, one JSON object per line for .jsonl.")


def _object_or_error(path: Path, line: int, value: Any) -> Record:
    if not isinstance(value, dict):
        raise DataError(
            f"{path}, line {line}: expected a JSON object with named fields, found {type(value).__name__}.",
            hint='Write each example as an object, e.g. {"question": "...", "answer": "..."}.',
        )
    return Record(line, value)


def _read_jsonl(path: Path, compression: str | None) -> Iterator[Record]:
    seen_text = False
    for number, line in _lines(path, compression):
        if not line.strip():
            continue
        seen_text = True
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}, line {number}: invalid JSON ({exc.msg} at column {exc.colno}).",
                hint="Each line of a .jsonl file must be one complete JSON object.",
            ) from None
        yield _object_or_error(path, number, value)
    if not seen_text:
        raise _empty(path)


def _read_json(path: Path, compression: str | None) -> Iterator[Record]:
    text = "".join(line for _, line in _lines(path, compression))
    if not text.strip():
        raise _empty(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}, line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}).",
            hint="A .json data file holds one array of example objects.",
        ) from None
    del text
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
    for index, item in enumerate(value, start=1):
        yield _object_or_error(path, index, item)


def _read_csv(path: Path, compression: str | None) -> Iterator[Record]:
    lines = (line for _, line in _lines(path, compression))
    reader = csv.DictReader(lines)
    try:
        if not reader.fieldnames:
            raise _empty(path) if reader.line_num <= 1 else DataError(f"{path}: the CSV file has no header row.")
        for row in reader:
            if None in row:
                raise DataError(
                    f"{path}, line {reader.line_num}: more values than header columns.",
                    hint="Quote fields that contain commas.",
                )
            if any(value for value in row.values()):
                yield Record(reader.line_num, {k: v if v is not None else "" for k, v in row.items()})
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({exc}).", hint="Fix the quoting.") from None


def _read_parquet(path: Path) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading .parquet needs pyarrow, which is not installed.",
            hint="pip install 'llmc-cli[parquet]' (or pyarrow), or convert the file to .jsonl.",
        ) from None
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                index += 1
                yield Record(index, row)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc}).", hint="Re-export the file.") from None
