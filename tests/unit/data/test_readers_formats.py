import json

import pytest

from llmc_cli.data.dataset import validation_size
from llmc_cli.data.formats import normalise
from llmc_cli.data.readers import read_records
from llmc_cli.errors import DataError


def write(tmp_path, name, text, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def lines(*records):
    return "".join(json.dumps(r) + "\n" for r in records)


def test_invalid_json_reports_the_line(tmp_path):
    path = write(tmp_path, "d.jsonl", lines({"question": "q", "answer": "a"}) + '{"question": "q",\n')
    with pytest.raises(DataError, match=r"d.jsonl, line 2: invalid JSON"):
        read_records(path)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("e.jsonl", "", "is empty"),
        ("e.jsonl", "\n  \n", "is empty"),
        ("e.txt", "x", "unsupported file type '.txt'"),
        ("e.json", '{"a": 1}', "expected an array"),
        ("e.jsonl", "[1, 2]\n", "line 1: expected a JSON object"),
    ],
)
def test_unusable_files(tmp_path, name, text, match):
    with pytest.raises(DataError, match=match):
        read_records(write(tmp_path, name, text))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_records(tmp_path / "nope.jsonl")


def test_non_utf8_names_the_line(tmp_path):
    path = write(tmp_path, "l.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', mode="wb")
    with pytest.raises(DataError, match="not UTF-8 text: byte 0xe9 on line 2"):
        read_records(path)


def test_csv_and_json_array_and_limit(tmp_path):
    csv_path = write(tmp_path, "d.csv", 'question,answer\n"1+1, please",2\nq2,a2\n')
    records = read_records(csv_path)
    assert [r.fields["question"] for r in records] == ["1+1, please", "q2"]
    assert [r.line for r in records] == [2, 3]
    array = write(tmp_path, "d.json", json.dumps({"data": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}))
    assert [r.fields["text"] for r in read_records(array, limit=2)] == ["a", "b"]


@pytest.mark.parametrize(
    ("record", "fmt", "messages"),
    [
        (
            {"instruction": "Add", "input": "1 and 2", "output": "3"},
            "alpaca",
            (("user", "Add\n\n1 and 2"), ("assistant", "3")),
        ),
        ({"instruction": "Say hi", "output": "hi"}, "alpaca", (("user", "Say hi"), ("assistant", "hi"))),
        ({"prompt": "p", "completion": "c"}, "prompt_completion", (("user", "p"), ("assistant", "c"))),
        ({"question": "q", "answer": "a"}, "qa", (("user", "q"), ("assistant", "a"))),
        (
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "chat",
            (("system", "s"), ("user", "u"), ("assistant", "a")),
        ),
        (
            {"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]},
            "chat",
            (("user", "u"), ("assistant", "a")),
        ),
    ],
)
def test_formats_are_detected_and_normalised(tmp_path, record, fmt, messages):
    fmt_found, examples = normalise(tmp_path / "x.jsonl", read_records(write(tmp_path, "x.jsonl", lines(record))))
    assert fmt_found == fmt
    assert examples[0].messages == messages


def test_text_format(tmp_path):
    fmt, examples = normalise(tmp_path, read_records(write(tmp_path, "t.jsonl", lines({"text": "hello"}))))
    assert fmt == "text" and examples[0].text == "hello"


def test_mixed_formats_are_refused_with_the_odd_line(tmp_path):
    path = write(
        tmp_path,
        "m.jsonl",
        lines({"question": "q", "answer": "a"}, {"question": "q", "answer": "a"}, {"prompt": "p", "completion": "c"}),
    )
    with pytest.raises(DataError, match=r"mixes formats \(2 qa, 1 prompt_completion\); line 3 is prompt_completion"):
        normalise(path, read_records(path))


def test_unknown_fields_are_refused(tmp_path):
    path = write(tmp_path, "u.jsonl", lines({"q": "x", "a": "y"}))
    with pytest.raises(DataError, match=r"line 1: cannot tell the format from the fields \['a', 'q'\]"):
        normalise(path, read_records(path))


def test_forced_format_lists_every_bad_example(tmp_path):
    path = write(
        tmp_path,
        "f.jsonl",
        lines(
            {"question": "q", "answer": "a"},
            {"question": "q"},
            {"question": "q", "answer": 3},
            {"question": "", "answer": "a"},
        ),
    )
    with pytest.raises(DataError) as info:
        normalise(path, read_records(path), "qa")
    message = info.value.message
    assert "3 of 4 examples do not fit the qa format" in message
    assert "line 2: missing field 'answer'" in message
    assert "line 3: field 'answer' must be a string, found int" in message
    assert "line 4: field 'question' is empty" in message


def test_chat_needs_an_assistant_turn_and_known_roles(tmp_path):
    path = write(
        tmp_path,
        "c.jsonl",
        lines({"messages": [{"role": "user", "content": "u"}]}, {"messages": [{"role": "bot", "content": "u"}]}),
    )
    with pytest.raises(DataError) as info:
        normalise(path, read_records(path))
    assert "line 1: no non-empty assistant turn" in info.value.message
    assert "line 2: turn 1 has role 'bot'" in info.value.message


@pytest.mark.parametrize(
    ("n", "expected"), [(5, 0), (10, 1), (100, 10), (2000, 200), (2001, 100), (7473, 374), (50000, 500)]
)
def test_validation_size_scales_with_the_dataset(n, expected):
    assert validation_size(n) == expected


def test_compressed_and_parquet_files_stream_the_same_records(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)]
    text = lines(*rows).encode()
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(text))
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(text))
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(b"question,answer\n" + b"".join(
        f"q{i},a{i}\n".encode() for i in range(5))))  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet", row_group_size=2)
    for name in ("d.jsonl.gz", "d.jsonl.zst", "d.csv.gz", "d.parquet"):
        assert [r.fields for r in read_records(tmp_path / name)] == rows, name
    assert [r.line for r in read_records(tmp_path / "d.jsonl.gz", limit=2)] == [1, 2]


def test_errors_in_a_compressed_file_name_the_line_and_a_damaged_file_is_a_data_error(tmp_path):
    import gzip

    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n{"text": "b"}\n{"text": \n'))
    with pytest.raises(DataError, match=r"bad.jsonl.gz, line 3: invalid JSON"):
        read_records(path)
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000)[:-30])
    with pytest.raises(DataError, match="cannot be read"):
        read_records(truncated)


def test_records_stream_lazily_so_an_error_far_into_a_file_comes_after_the_good_records(tmp_path):
    from llmc_cli.data.readers import iter_records

    path = write(tmp_path, "s.jsonl", lines({"text": "ok"}) * 3 + "not json\n")
    stream = iter_records(path)
    assert [next(stream).line for _ in range(3)] == [1, 2, 3]
    with pytest.raises(DataError, match="line 4"):
        next(stream)
