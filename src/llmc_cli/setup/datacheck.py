"""A data file as ``llmc setup`` shows it before asking anything about it.

Unlike the run's scan (data/scan.py), which refuses a file with problems, this reads the whole
file and *reports*: the format detected, how many examples, the size bucket the presets use,
one example, and every problem found with its line number (up to :data:`MAX_SHOWN`), so the
wizard can name them and ask for a fixed file. Token lengths need the model's tokenizer and
come later, from the run's own plan (setup/assess.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from llmc_cli.data.formats import Normaliser, detect
from llmc_cli.data.readers import SUPPORTED, check_file, iter_records
from llmc_cli.errors import DataError

MAX_SHOWN = 10
PREVIEW_CHARS = 160


@dataclass(frozen=True)
class DataProfile:
    path: Path
    size_bytes: int
    format: str | None  # None: no record has a recognisable format
    records: int
    problems: list[str] = field(default_factory=list)  # "line N: what is wrong", the first MAX_SHOWN
    n_problems: int = 0
    preview: str = ""  # the first good example, shortened

    @property
    def usable(self) -> bool:
        return self.format is not None and self.n_problems == 0


def profile_data(path: Path) -> DataProfile:
    """Read ``path`` through llmc's readers and format checks, collecting problems instead of raising.

    Raises:
        DataError: the path is missing, a folder or of an unsupported type (nothing to profile).
    """
    path = Path(path).expanduser()
    check_file(path)
    checker = Normaliser(path, "auto")
    kinds: Counter[str] = Counter()
    problems: list[str] = []
    records, n_problems, preview = 0, 0, ""
    try:
        for record in iter_records(path):
            records += 1
            fmt = detect(record.fields)
            if fmt is None:
                n_problems += 1
                _add(problems, f"line {record.line}: no known format in the fields {sorted(record.fields)}")
                continue
            kinds[fmt] += 1
            example = checker.feed(record)
            if example is not None and not preview:
                preview = _shorten(example)
    except DataError as exc:  # an unreadable line ends the file for the readers: it is one problem more
        n_problems += 1
        _add(problems, exc.message.removeprefix(f"{path}, ").rstrip(".") + " (the file is not read past it)")
    main = kinds.most_common(1)[0][0] if kinds else None
    for kind, count in kinds.items():
        if kind != main:
            n_problems += count
            first = checker.first_line[kind]
            _add(problems, f"line {first}: {kind} format while most examples are {main} ({count} such)")
    n_problems += checker.n_problems
    for problem in checker.problems:
        _add(problems, problem)
    problems.sort(key=_line_of)
    return DataProfile(path, path.stat().st_size, main, records, problems, n_problems, preview)


PREFERRED = (".jsonl", ".parquet", ".csv", ".json")  # .json last: configs and answer files are JSON too


def data_files(folder: Path) -> list[Path]:
    """The files in ``folder`` that llmc can read, most likely data first: by type (:data:`PREFERRED`),
    then largest first (the wizard's default)."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        kinds = [part.lower() for part in path.suffixes if part.lower() in SUPPORTED]
        if path.is_file() and kinds:
            found.append((PREFERRED.index(kinds[-1]), -path.stat().st_size, path.name, path))
    return [Path(item[-1].name) for item in sorted(found)]


def _add(problems: list[str], text: str) -> None:
    if len(problems) < MAX_SHOWN:
        problems.append(text)


def _line_of(problem: str) -> int:
    head = problem.removeprefix("line ").split(":", 1)[0]
    return int(head) if head.isdigit() else 0


def _shorten(example) -> str:
    if example.text is not None:
        shown = example.text
    else:
        shown = " | ".join(f"{role}: {content}" for role, content in example.messages)
    shown = " ".join(shown.split())
    return shown if len(shown) <= PREVIEW_CHARS else shown[: PREVIEW_CHARS - 1] + "…"
