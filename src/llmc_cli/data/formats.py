"""Detect the format of each record and normalise it to a conversation or a plain text.

Formats and the fields that identify them (checked in this order):

============================  ==================================================
chat                          ``messages``: [{"role", "content"}, ...]
chat (ShareGPT)               ``conversations``: [{"from", "value"}, ...]
alpaca                        ``instruction``, ``output`` (optional ``input``)
prompt_completion             ``prompt``, ``completion``
qa                            ``question``, ``answer`` (as in GSM8K)
text                          ``text`` (trained on whole, no prompt mask)
============================  ==================================================
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmc_cli.data.readers import Record
from llmc_cli.errors import DataError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
REQUIRED = {
    "chat": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "qa": ("question", "answer"),
    "text": ("text",),
}
MAX_LISTED = 5


@dataclass(frozen=True)
class Example:
    """A normalised example: a conversation (role, content) pairs, or a plain text."""

    line: int
    messages: tuple[tuple[str, str], ...] = ()
    text: str | None = None


def detect(fields: dict[str, Any]) -> str | None:
    """The format a record's fields identify, or None."""
    if "messages" in fields or "conversations" in fields:
        return "chat"
    for name in ("alpaca", "prompt_completion", "qa", "text"):
        if all(key in fields for key in REQUIRED[name]):
            return name
    return None


def normalise(path: Path, records: Iterable[Record], forced: str = "auto") -> tuple[str, list[Example]]:
    """Turn records into Examples, checking every record; report all problems at once.

    Returns:
        The format used and the examples.

    Raises:
        DataError: mixed formats, unknown format, missing or mistyped fields.
    """
    checker = Normaliser(path, forced)
    examples = [example for record in records if (example := checker.feed(record)) is not None]
    return checker.finish(), examples


class Normaliser:
    """Convert records one at a time, remembering every problem; :meth:`finish` reports them.

    With ``forced="auto"`` each record's format is detected from its own fields; a file
    whose records disagree is refused at :meth:`finish`, naming the first odd line.
    """

    def __init__(self, path: Path, forced: str = "auto") -> None:
        self.path = path
        self.forced = forced
        self.records = 0
        self.problems: list[str] = []
        self.n_problems = 0
        self.kinds: Counter[str] = Counter()
        self.first_line: dict[str, int] = {}
        self.unknown: list[int] = []
        self.unknown_fields: list[str] = []

    def feed(self, record: Record) -> Example | None:
        """The record as an Example, or None when it has a problem (kept for :meth:`finish`)."""
        self.records += 1
        fmt = self.forced
        if fmt == "auto":
            fmt = detect(record.fields)
            if fmt is None:
                if not self.unknown:
                    self.unknown_fields = sorted(record.fields)
                self.unknown.append(record.line)
                return None
            self.kinds[fmt] += 1
            self.first_line.setdefault(fmt, record.line)
        try:
            return _convert(fmt, record)
        except ValueError as exc:
            self.n_problems += 1
            if len(self.problems) < MAX_LISTED:
                self.problems.append(f"line {record.line}: {exc}")
            return None

    def finish(self) -> str:
        """The format of the file.

        Raises:
            DataError: any record seen had an unknown or different format, or did not fit it.
        """
        path = self.path
        if self.unknown:
            raise DataError(
                f"{path}, line {self.unknown[0]}: cannot tell the format from the fields {self.unknown_fields}"
                + (f" ({len(self.unknown)} such examples)" if len(self.unknown) > 1 else "")
                + ".",
                hint="Use instruction/input/output, prompt/completion, question/answer, messages, "
                "conversations or text fields, or force one with --format.",
            )
        fmt = self.forced
        if fmt == "auto":
            main = self.kinds.most_common(1)[0][0]
            if len(self.kinds) > 1:
                odd = min((line, kind) for kind, line in self.first_line.items() if kind != main)
                summary = ", ".join(f"{n} {kind}" for kind, n in self.kinds.most_common())
                raise DataError(
                    f"{path} mixes formats ({summary}); line {odd[0]} is {odd[1]} while most are {main}.",
                    hint="Keep one format per file, or split the file.",
                )
            fmt = main
        if self.problems:
            listed = "\n".join(f"  {p}" for p in self.problems)
            more = f"\n  ... and {self.n_problems - MAX_LISTED} more" if self.n_problems > MAX_LISTED else ""
            raise DataError(
                f"{path}: {self.n_problems} of {self.records} examples do not fit the {fmt} format:\n{listed}{more}",
                hint=f"Fix those examples, or choose another --format. Format {fmt} needs {_needs(fmt)}.",
            )
        return fmt


def _needs(fmt: str) -> str:
    return " and ".join(f"'{key}'" for key in REQUIRED[fmt]) + (" (or 'conversations')" if fmt == "chat" else "")


def _text(fields: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    if key not in fields or fields[key] is None:
        raise ValueError(f"missing field '{key}'")
    value = fields[key]
    if not isinstance(value, str):
        raise ValueError(f"field '{key}' must be a string, found {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"field '{key}' is empty")
    return value


def _convert(fmt: str, record: Record) -> Example:
    fields = record.fields
    if fmt == "text":
        return Example(record.line, text=_text(fields, "text"))
    if fmt == "chat":
        return Example(record.line, messages=_chat_messages(fields))
    if fmt == "alpaca":
        prompt = _text(fields, "instruction")
        extra = _text(fields, "input", allow_empty=True) if fields.get("input") not in (None, "") else ""
        prompt = f"{prompt}\n\n{extra}" if extra.strip() else prompt
        response = _text(fields, "output")
    elif fmt == "prompt_completion":
        prompt, response = _text(fields, "prompt"), _text(fields, "completion")
    elif fmt == "qa":
        prompt, response = _text(fields, "question"), _text(fields, "answer")
    else:
        raise ValueError(f"unknown format '{fmt}'")
    return Example(record.line, messages=(("user", prompt), ("assistant", response)))


def _chat_messages(fields: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    sharegpt = "messages" not in fields
    turns = fields.get("conversations" if sharegpt else "messages")
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"'{'conversations' if sharegpt else 'messages'}' must be a non-empty list")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise ValueError(f"turn {index + 1} needs '{role_key}' and '{content_key}'")
        role = SHAREGPT_ROLES.get(turn[role_key]) if sharegpt else turn[role_key]
        if role not in ROLES:
            allowed = sorted(SHAREGPT_ROLES) if sharegpt else list(ROLES)
            raise ValueError(f"turn {index + 1} has role {turn[role_key]!r}; use one of {allowed}")
        if not isinstance(turn[content_key], str):
            raise ValueError(f"turn {index + 1}: '{content_key}' must be a string")
        messages.append((role, turn[content_key]))
    if not any(role == "assistant" and content.strip() for role, content in messages):
        raise ValueError("no non-empty assistant turn to learn from")
    return tuple(messages)
