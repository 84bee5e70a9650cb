"""Scoring sample answers: final-answer extraction for GSM8K-style, multiple-choice and free-text references."""

import pytest

from llmc_cli.config.schema import RunConfig
from llmc_cli.engine.answers import final_answer, score
from llmc_cli.engine.samples import fit_prompt

GSM8K = RunConfig().training.answer_pattern
CHOICE = r"[Aa]nswer:\s*\(?([A-E])\)?"


def test_gsm8k_answers_compare_as_numbers_and_the_last_one_counts():
    assert final_answer("48/2 = <<48/2=24>>24\n#### 1,024", GSM8K) == "1024"
    assert final_answer("#### 72.0", GSM8K) == "72" and final_answer("#### -3.5", GSM8K) == "-3.5"
    assert final_answer("#### 5 wait, #### 6", GSM8K) == "6"  # a restated answer: the last one
    scores = score(["so #### 72", "I think 72", "#### 7"], ["... #### 72", "#### 72", "#### 72"], GSM8K)
    assert scores.correct == [True, False, False] and scores.scored == 3
    assert scores.exact_match == 1 / 3 and scores.format_adherence == 2 / 3


def test_multiple_choice_references_with_their_own_pattern():
    scores = score(["Answer: (B)", "answer: C", "B"], ["Answer: B", "Answer: (D)", "Answer: B"], CHOICE)
    assert scores.correct == [True, False, False] and scores.format_adherence == 2 / 3


def test_free_text_references_get_rouge_l_and_chrf_and_no_answer_scores():
    scores = score(["the cat on the mat", "Paris"], ["the cat sat on the mat", "Paris"], GSM8K)
    assert scores.exact_match is None and scores.format_adherence is None and scores.correct == [None, None]
    # ROUGE-L: LCS 5 of 5 output and 6 reference words -> F1 = 2 * 1 * 5/6 / (1 + 5/6) = 10/11; identical: 1
    assert scores.overlap == [pytest.approx(10 / 11), 1.0] and scores.rouge_l == pytest.approx((10 / 11 + 1) / 2)
    assert scores.text_scored == 2 and 50 < scores.chrf < 100
    assert score(["Paris"], ["Paris"], GSM8K).chrf == pytest.approx(100)
    assert score(["zzz qqq"], ["Paris"], GSM8K).chrf == pytest.approx(0) == score(["zzz"], ["Paris"], GSM8K).rouge_l
    mixed = score(["#### 4", "hello"], ["#### 4", "free text"], GSM8K)  # each reference by its own kind
    assert mixed.scored == 1 and mixed.exact_match == 1.0 and mixed.correct == [True, None]
    assert mixed.text_scored == 1 and mixed.overlap == [None, 0.0]
    gsm = score(["#### 4"], ["#### 4"], GSM8K)
    assert gsm.rouge_l is None and gsm.chrf is None and gsm.text_scored == 0
    plain = score(["anything"], [""], GSM8K)  # plain-text runs: no reference, no score
    assert plain.rouge_l is None and plain.exact_match is None and plain.correct == [None]


def test_a_prompt_longer_than_the_context_keeps_its_end():
    ids = list(range(100))
    assert fit_prompt(ids, 28, 128) == ids  # fits: unchanged
    assert fit_prompt(ids, 64, 128) == ids[-64:]  # 64 new tokens leave room for the last 64
    assert fit_prompt(ids, 500, 128) == ids[-1:]  # never empty
    assert fit_prompt(ids, 64, None) == ids  # no known context: unchanged
