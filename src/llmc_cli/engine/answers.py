"""Scoring sample answers against references: exact match of the final answer and format adherence,
or ROUGE-L and chrF where the reference is free text.

A reference "carries a final answer" when the answer pattern (``answer_pattern``; GSM8K's
``#### 42`` by default) finds one in it. Those samples get exact match and format adherence: an
output is correct when the pattern finds an answer in it equal to the reference's (numbers compared
as numbers, so ``1,000`` equals ``1000`` and ``3.0`` equals ``3``; other answers as
whitespace-trimmed text), and it adheres to the format when the pattern finds any answer in it.

Samples whose reference is non-empty free text (no final answer: an instruction's response, a
summary) get the usual text-overlap scores instead, from the libraries everyone quotes them from:
ROUGE-L F1 (Google's ``rouge-score``, no stemming; 0 to 1, the mean over the samples) and chrF
(``sacrebleu``'s corpus chrF, character 6-grams, beta 2; 0 to 100). ROUGE-L's tokenizer keeps
only Latin letters and digits, so text in other scripts scores by chrF alone. Plain-text runs have
empty references and get no score. A score whose samples are absent is None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Scores:
    exact_match: float | None  # share of scored samples answered correctly
    format_adherence: float | None  # share of scored samples whose output has an answer in the expected form
    scored: int  # samples whose reference carries a final answer
    correct: list[bool | None]  # per sample; None where the reference carries no answer
    rouge_l: float | None = None  # mean ROUGE-L F1 of the free-text samples
    chrf: float | None = None  # corpus chrF of the free-text samples, 0-100
    text_scored: int = 0  # samples whose reference is free text
    overlap: list[float | None] | None = None  # per sample ROUGE-L F1; None where not free text


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


def text_overlap(outputs: list[str], references: list[str]) -> tuple[list[float], float]:
    """Per-pair ROUGE-L F1 and the corpus chrF of ``outputs`` against ``references``."""
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import CHRF

    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    rouge = [scorer.score(ref, out)["rougeL"].fmeasure for out, ref in zip(outputs, references, strict=True)]
    return rouge, CHRF().corpus_score(outputs, [references]).score


def score(outputs: list[str], references: list[str], pattern: str) -> Scores:
    answers = _answer_scores(outputs, references, pattern)
    pairs = enumerate(zip(references, answers.correct, strict=True))
    free = [i for i, (reference, correct) in pairs if correct is None and reference.strip()]
    if not free:
        return answers
    rouge, chrf = text_overlap([outputs[i] for i in free], [references[i] for i in free])
    overlap: list[float | None] = [None] * len(outputs)
    for i, value in zip(free, rouge, strict=True):
        overlap[i] = value
    return replace(answers, rouge_l=sum(rouge) / len(rouge), chrf=chrf, text_scored=len(free), overlap=overlap)


def _answer_scores(outputs: list[str], references: list[str], pattern: str) -> Scores:
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
