"""Scoring sample answers against references: exact match of the final answer, and format adherence.

A reference "carries a final answer" when the answer pattern (``answer_pattern``; GSM8K's
``#### 42`` by default) finds one in it. Only those samples are scored: an output is correct when
the pattern finds an answer in it equal to the reference's (numbers compared as numbers, so
``1,000`` equals ``1000`` and ``3.0`` equals ``3``; other answers as whitespace-trimmed text), and
it adheres to the format when the pattern finds any answer in it. With no reference carrying an
answer both scores are None: free text is not scored by these two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Scores:
    exact_match: float | None  # share of scored samples answered correctly
    format_adherence: float | None  # share of scored samples whose output has an answer in the expected form
    scored: int  # samples whose reference carries a final answer
    correct: list[bool | None]  # per sample; None where the reference carries no answer


def final_answer(text: str, pattern: str) -> str | None:
    """The pattern's first group in the last match in ``text`` (a model may restate a format), normalised."""
    found = re.findall(pattern, text)
    if not found:
        return None
    answer = found[-1] if isinstance(found[-1], str) else found[-1][0]
    return _normal(answer)


def _normal(answer: str) -> str:
    plain = answer.strip().replace(",", "")
    try:
        number = float(plain)
    except ValueError:
        return " ".join(answer.split())
    return str(int(number)) if number.is_integer() else repr(number)


def score(outputs: list[str], references: list[str], pattern: str) -> Scores:
    correct: list[bool | None] = []
    formed = 0
    for output, reference in zip(outputs, references, strict=True):
        expected = final_answer(reference, pattern)
        if expected is None:
            correct.append(None)
            continue
        got = final_answer(output, pattern)
        formed += got is not None
        correct.append(got == expected)
    scored = sum(c is not None for c in correct)
    if scored == 0:
        return Scores(None, None, 0, correct)
    return Scores(sum(bool(c) for c in correct) / scored, formed / scored, scored, correct)
