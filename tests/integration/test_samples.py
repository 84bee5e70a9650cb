"""Sample answers while training: texts and scores logged, and training itself untouched."""

import json

import pytest
from tests.conftest import assert_same_adapter_weights, read_jsonl

from llmc_cli import FineTuner
from llmc_cli.errors import ConfigError

OPTS = dict(max_steps=4, limit=40, max_length=256, eval_every=2, report_to="none", seed=3)


def test_sampling_logs_answers_and_scores_and_leaves_training_bit_identical(tmp_path, tiny_model_dir, gsm8k_train):
    tuner = FineTuner(
        gsm8k_train,
        model=str(tiny_model_dir),
        output=tmp_path / "on",
        samples=2,
        sample_every=2,
        sample_tokens=24,
        **OPTS,
    )
    with pytest.raises(ConfigError, match="no trained adapter to answer with yet"):
        tuner.generate(["What is 2 + 2?"])
    sampled = tuner.train()
    plain = FineTuner(gsm8k_train, model=str(tiny_model_dir), output=tmp_path / "off", samples=0, **OPTS).train()

    losses = lambda run: [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "train"]  # noqa: E731
    assert losses(sampled) == losses(plain)  # bit-identical, not close
    assert_same_adapter_weights(sampled / "final", plain / "final")
    assert not (plain / "samples.jsonl").exists()

    lines = read_jsonl(sampled / "samples.jsonl")
    assert [line["step"] for line in lines] == [0, 0, 2, 2, 4, 4]  # before, every 2 steps, at the end once
    assert all(line["prompt"] and "####" in line["reference"] for line in lines)  # GSM8K references
    assert all(isinstance(line["output"], str) and isinstance(line["correct"], bool) for line in lines)
    scores = [r for r in read_jsonl(sampled / "metrics.jsonl") if r["type"] == "samples"]
    assert [s["step"] for s in scores] == [0, 2, 4] and all(s["scored"] == 2 for s in scores)
    assert all(0.0 <= s["exact_match"] <= 1.0 and "samples" not in s for s in scores)
    summary = json.loads((sampled / "summary.json").read_text())
    assert summary["samples"]["first"]["step"] == 0 and summary["samples"]["last"]["step"] == 4
    assert summary["samples"]["time_s"] > 0
    from rich.console import Console

    from llmc_cli.analyze.samples import read_samples, render_samples

    history = read_samples(sampled)  # what llmc analyze --samples shows
    assert [r["step"] for r in history.scores] == [0, 2, 4] and history.shown_steps() == [0, 2, 4]
    assert [a["output"] for a in history.answers[4]] == [line["output"] for line in lines[-2:]]
    console = Console(width=160, record=True)
    render_samples(console, history)
    assert "Answers at step 4" in console.export_text() and read_samples(plain) is None
    answers = tuner.generate(["What is 2 + 2?", "Name a colour."], max_tokens=5)  # base + adapter, chat template
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    (long,) = tuner.generate(["seven " * 1500], max_tokens=3)  # longer than the model's 1024 positions
    assert isinstance(long, str)


def test_plain_text_data_gets_samples_without_scores(tmp_path, tiny_model_dir):
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"text": f"Note {i}: the river rose by {i} metres overnight."}) + "\n"
                            for i in range(30)))  # fmt: skip
    run = FineTuner(data, model=str(tiny_model_dir), output=tmp_path, samples=2, sample_tokens=4,
                    max_steps=1, report_to="none").train()  # fmt: skip
    lines = read_jsonl(run / "samples.jsonl")
    assert len(lines) == 4 and all(line["reference"] == "" and line["correct"] is None for line in lines)
    assert all(line["prompt"].startswith("Note") for line in lines)
    scores = [r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "samples"]
    assert [(r["exact_match"], r["format_adherence"], r["scored"]) for r in scores] == [(None, None, 0)] * 2


def test_free_text_references_are_scored_by_rouge_l_and_chrf(tmp_path, tiny_model_dir):
    data = tmp_path / "answers.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Describe river {i}.", "output": f"River {i} is wide."}) + "\n"
                            for i in range(30)))  # fmt: skip
    run = FineTuner(data, model=str(tiny_model_dir), output=tmp_path, samples=2, sample_tokens=4,
                    max_steps=1, report_to="none").train()  # fmt: skip
    lines = read_jsonl(run / "samples.jsonl")
    assert len(lines) == 4 and all(line["reference"].startswith("River") and line["correct"] is None for line in lines)
    assert all(0 <= line["rouge_l"] <= 1 for line in lines)
    scores = [r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "samples"]
    assert [(r["exact_match"], r["text_scored"]) for r in scores] == [(None, 2)] * 2
    assert all(0 <= r["rouge_l"] <= 1 and 0 <= r["chrf"] <= 100 for r in scores)
    summary = json.loads((run / "summary.json").read_text())["samples"]
    assert summary["first"]["rouge_l"] == scores[0]["rouge_l"] and summary["last"]["chrf"] == scores[1]["chrf"]


def test_default_sampling_keeps_to_its_share_of_training_time():
    from types import SimpleNamespace

    from llmc_cli.engine.samples import BUDGET_SHARE, Sampler

    training = SimpleNamespace(sample_every=None, sample_tokens=8, answer_pattern="#### (\\d+)")
    session = SimpleNamespace(config=SimpleNamespace(training=training))
    sampler = Sampler(session, bus=None, prompts=["p"])
    assert sampler.due(0, evaluated=True, train_time_s=0.0)  # before training: always
    sampler.time_s = 2.0
    assert not sampler.due(10, evaluated=True, train_time_s=2.0 / BUDGET_SHARE - 1)  # over budget: skipped
    assert sampler.due(10, evaluated=True, train_time_s=2.0 / BUDGET_SHARE)
    assert not sampler.due(10, evaluated=False, train_time_s=1e9)  # between evaluations: never by default
    assert sampler.due(11, evaluated=False, train_time_s=0.0, final=True)  # the end: always
    sampler.every = 5  # sample_every 5
    assert sampler.due(15, evaluated=False, train_time_s=0.0) and not sampler.due(16, True, 1e9)
    sampler.every = 0
    assert not sampler.due(0, evaluated=True, train_time_s=0.0)  # 0: off


def test_a_resumed_run_keeps_its_first_sampling_as_the_before(tmp_path, tiny_model_dir, gsm8k_train):
    from llmc_cli.errors import LlmcError
    from llmc_cli.faults import Faults, parse

    opts = dict(samples=1, sample_tokens=4, max_steps=4, limit=40, max_length=256, checkpoint_interval=2)
    tuner = FineTuner(gsm8k_train, model=str(tiny_model_dir), output=tmp_path, report_to="none",
                      faults=Faults(parse("error@step=3")), auto_recovery=False, **opts)  # fmt: skip
    with pytest.raises(LlmcError):
        tuner.train()
    run = FineTuner.resume(tmp_path / "run-1").train()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["samples"]["first"]["step"] == 0 and summary["samples"]["last"]["step"] == 4
