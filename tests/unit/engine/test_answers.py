"""Scoring sample answers: final-answer extraction for GSM8K-style, multiple-choice and free-text references."""

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


def test_free_text_references_are_not_scored():
    scores = score(["Paris is the capital."], ["The capital of France is Paris."], GSM8K)
    assert scores.exact_match is None and scores.format_adherence is None and scores.correct == [None]
    mixed = score(["#### 4", "hello"], ["#### 4", "free text"], GSM8K)  # only the references with an answer
    assert mixed.scored == 1 and mixed.exact_match == 1.0 and mixed.correct == [True, None]


def test_a_prompt_longer_than_the_context_keeps_its_end():
    ids = list(range(100))
    assert fit_prompt(ids, 28, 128) == ids  # fits: unchanged
    assert fit_prompt(ids, 64, 128) == ids[-64:]  # 64 new tokens leave room for the last 64
    assert fit_prompt(ids, 500, 128) == ids[-1:]  # never empty
    assert fit_prompt(ids, 64, None) == ids  # no known context: unchanged
