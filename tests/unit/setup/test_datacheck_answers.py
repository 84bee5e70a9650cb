"""The wizard's data profile (problems listed by line, never raised) and its answers and llmc.toml."""

from pathlib import Path

import pytest

from llmc_cli.errors import ConfigError, DataError
from llmc_cli.setup.answers import Answers, load_answers, render_toml
from llmc_cli.setup.datacheck import data_files, profile_data


def test_every_problem_is_listed_with_its_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        '{"question": "1+1?", "answer": "2"}',
        '{"question": "missing answer"}',
        '{"prompt": "p", "completion": "c"}',
        '{"question": "", "answer": "empty question"}',
        '{"question": "2+2?", "answer": "4"}',
    ]
    path.write_text("\n".join(lines) + "\n")
    profile = profile_data(path)
    assert profile.format == "qa" and profile.records == 5 and not profile.usable
    assert profile.n_problems == 3
    assert [p.split(":")[0] for p in profile.problems] == ["line 2", "line 3", "line 4"]
    assert "prompt_completion format while most examples are qa" in profile.problems[1]
    assert profile.preview == "user: 1+1? | assistant: 2"


def test_a_clean_file_is_usable_and_a_missing_one_is_a_data_error(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"text": "hello"}\n')
    assert profile_data(path).usable
    with pytest.raises(DataError, match="does not exist"):
        profile_data(tmp_path / "nope.jsonl")


def test_data_files_prefer_jsonl_then_size(tmp_path):
    (tmp_path / "answers.json").write_text("{}" * 100)
    (tmp_path / "small.jsonl").write_text("{}")
    (tmp_path / "big.jsonl").write_text("{}" * 50)
    (tmp_path / "notes.txt").write_text("x")
    assert data_files(tmp_path) == [Path("big.jsonl"), Path("small.jsonl"), Path("answers.json")]


def test_the_toml_is_a_pure_function_of_the_answers_and_is_validated():
    answers = Answers("d.jsonl", "./m", "quality", 10, 3, [], "runs")
    text = render_toml(answers, Path("llmc.toml"))
    assert text == render_toml(Answers(**answers.to_dict()), Path("llmc.toml"))
    assert text.endswith("checkpoint_interval = 10\nmax_checkpoints = 3\nreport_to = []\n")
    assert "--config other.toml" in render_toml(answers, Path("other.toml"))
    with pytest.raises(ConfigError, match="preset"):
        render_toml(Answers("d.jsonl", "./m", "fastest"), Path("llmc.toml"))


def test_an_answers_file_with_an_unknown_answer_is_refused(tmp_path):
    path = tmp_path / "answers.json"
    path.write_text('{"data": "d.jsonl", "modle": "./m"}')
    with pytest.raises(ConfigError, match="unknown answer"):
        load_answers(path)


def test_an_answers_file_with_a_value_of_the_wrong_type_is_refused(tmp_path):
    path = tmp_path / "answers.json"
    path.write_text('{"data": "d.jsonl", "start": "yes", "max_checkpoints": true, "report_to": "tensorboard"}')
    with pytest.raises(ConfigError, match="start should be true or false; max_checkpoints should be a whole number"):
        load_answers(path)
