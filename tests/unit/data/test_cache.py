"""The prepared-data cache: the rows it serves are exactly those of the in-memory pipeline,
its key changes with anything that changes tokens, and a damaged entry is rebuilt."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from llmc_cli.config.families import FAMILIES
from llmc_cli.config.schema import DataSettings
from llmc_cli.data import prepare as prepare_module
from llmc_cli.data.formats import normalise
from llmc_cli.data.layout import held_out
from llmc_cli.data.packing import Collator, pack, unpacked
from llmc_cli.data.prepare import cache_key, prepare
from llmc_cli.data.readers import read_records
from llmc_cli.data.scan import scan
from llmc_cli.data.templates import ensure_chat_template
from llmc_cli.data.tokenize import encode


def _tokenizer(folder, template_family=None):
    """The tokenizer as a run sees it; with template_family, that family's template replaces its own."""
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.pad_token or tok.eos_token
    if template_family is not None:
        tok.chat_template = None  # the tokenizer built without ../shared ships a template of its own
    ensure_chat_template(tok, FAMILIES[template_family or "tinyllama"])
    return tok


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return _tokenizer(tokenizer_dir)


def settings(data, **values):
    return DataSettings(data=data, **values)


def in_memory_rows(settings_, tokenizer, seed):
    """The pipeline before the cache: every example in memory, split, encoded and packed."""
    _, examples = normalise(settings_.data, read_records(settings_.data, settings_.limit))
    held = set(held_out(len(examples), seed).tolist())
    train = [e for i, e in enumerate(examples) if i not in held]
    val = [e for i, e in enumerate(examples) if i in held]
    options = {"overlong": settings_.overlong, "train_on_prompt": settings_.train_on_prompt}
    (train_enc, train_report), (val_enc, val_report) = (
        encode(tokenizer, split, settings_.max_length, **options) for split in (train, val)
    )
    if settings_.packing:
        return pack(train_enc, settings_.max_length, seed), pack(val_enc, settings_.max_length, seed), train_report
    return unpacked(train_enc), unpacked(val_enc), train_report


def as_lists(rows):
    return [(list(r.input_ids), list(r.labels), list(r.position_ids), r.examples) for r in rows]


@pytest.mark.parametrize(
    "values",
    [
        {"max_length": 256},
        {"max_length": 128, "packing": False, "train_on_prompt": True},
        {"max_length": 96, "overlong": "drop", "limit": 900},
    ],
)
def test_cached_rows_equal_the_in_memory_pipeline(tmp_path, tokenizer, gsm8k_train, values):
    data = settings(gsm8k_train, **values)
    rows = prepare(data, tokenizer, scan(data, tmp_path), seed=3, root=tmp_path)
    train, val, report = in_memory_rows(data, tokenizer, seed=3)
    assert as_lists(rows.train[i] for i in range(len(rows.train))) == as_lists(train)
    assert as_lists(rows.val[i] for i in range(len(rows.val))) == as_lists(val)
    assert vars(rows.train_report) == {**vars(report), "lines_dropped": report.lines_dropped[:100]}
    collate = Collator(tokenizer.pad_token_id, packed=data.packing)
    n = min(2, len(train))
    for key, value in collate([rows.train[i] for i in range(n)]).items():
        expected = collate(train[:n])[key]
        assert (value == expected).all() if hasattr(value, "all") else value == expected, key


def test_second_prepare_reuses_the_entry_and_seed_or_packing_only_add_a_layout(tmp_path, tokenizer, gsm8k_train):
    data = settings(gsm8k_train, limit=600, max_length=256)
    first = prepare(data, tokenizer, scan(data, tmp_path), seed=0, root=tmp_path)
    again = prepare(data, tokenizer, scan(data, tmp_path), seed=0, root=tmp_path)
    assert not first.reused and again.reused and again.fingerprint == first.fingerprint
    other_seed = prepare(data, tokenizer, scan(data, tmp_path), seed=1, root=tmp_path)
    unpacked_rows = prepare(data.model_copy(update={"packing": False}), tokenizer, scan(data, tmp_path), 0, tmp_path)
    assert other_seed.reused and unpacked_rows.reused
    assert len({first.fingerprint, other_seed.fingerprint, unpacked_rows.fingerprint}) == 3
    assert len({r.cache_path for r in (first, other_seed, unpacked_rows)}) == 1


def test_anything_that_changes_tokens_changes_the_key(tmp_path, tokenizer, tokenizer_dir, gsm8k_train):
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(b"".join(gsm8k_train.read_bytes().splitlines(keepends=True)[:50]))
    base = settings(copy, max_length=256)
    key = cache_key(base, scan(base, tmp_path), tokenizer)
    variants = [
        cache_key(base.model_copy(update={"max_length": 128}), scan(base, tmp_path), tokenizer),
        cache_key(base.model_copy(update={"train_on_prompt": True}), scan(base, tmp_path), tokenizer),
        cache_key(base.model_copy(update={"overlong": "drop"}), scan(base, tmp_path), tokenizer),
        cache_key(base, scan(base, tmp_path), _tokenizer(tokenizer_dir, template_family="qwen")),
    ]
    with copy.open("a") as handle:  # the file changes: its content fingerprint does too
        handle.write(json.dumps({"question": "One more?", "answer": "Yes.\n#### 1"}) + "\n")
    variants.append(cache_key(base, scan(base, tmp_path), tokenizer))
    assert len({key, *variants}) == len(variants) + 1
    # The seed, packing and the number of workers are not part of the key.
    same = [base.model_copy(update={"packing": False}), base.model_copy(update={"data_workers": 2})]
    copy.write_bytes(b"".join(gsm8k_train.read_bytes().splitlines(keepends=True)[:50]))
    assert {cache_key(s, scan(s, tmp_path), tokenizer) for s in same} == {key}


def test_a_damaged_entry_is_rebuilt_with_a_notice(tmp_path, tokenizer, gsm8k_train):
    data = settings(gsm8k_train, limit=300, max_length=256)
    first = prepare(data, tokenizer, scan(data, tmp_path), seed=0, root=tmp_path)
    tokens = Path(first.cache_path) / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-10])
    again = prepare(data, tokenizer, scan(data, tmp_path), seed=0, root=tmp_path)
    assert not again.reused
    assert any("was unusable" in note and "rebuilt" in note for note in again.notes)
    assert as_lists(again.train[i] for i in range(len(again.train))) == as_lists(
        first.train[i] for i in range(len(first.train))
    )


def test_parallel_preparation_writes_the_same_entry(tmp_path, tokenizer, gsm8k_train, monkeypatch):
    monkeypatch.setattr(prepare_module, "PARALLEL_FROM", 1)
    data = settings(gsm8k_train, limit=2500, max_length=256)
    one = prepare(data, tokenizer, scan(data, tmp_path / "a"), 0, tmp_path / "a", workers=1)
    two = prepare(data, tokenizer, scan(data, tmp_path / "b"), 0, tmp_path / "b", workers=2)
    manifest = json.loads((Path(two.cache_path) / "manifest.json").read_text())
    assert manifest["workers"] == 2
    for name in ("tokens.bin", "targets.bin", "offsets.npy", "records.npy"):
        assert (Path(one.cache_path) / name).read_bytes() == (Path(two.cache_path) / name).read_bytes(), name


KILLER = """
import sys
from pathlib import Path
from transformers import AutoTokenizer
from llmc_cli.config.families import FAMILIES
from llmc_cli.config.schema import DataSettings
from llmc_cli.data import prepare as p
from llmc_cli.data.scan import scan
from llmc_cli.data.templates import ensure_chat_template
tok = AutoTokenizer.from_pretrained(sys.argv[1]); tok.pad_token = tok.pad_token or tok.eos_token
ensure_chat_template(tok, FAMILIES["tinyllama"])
p.CHUNK = 64
data = DataSettings(data=Path(sys.argv[2]), max_length=256)
p.prepare(data, tok, scan(data, Path(sys.argv[3])), 0, Path(sys.argv[3]), workers=1)
"""


def test_a_preparation_killed_mid_write_is_never_used_and_is_rebuilt(tmp_path, tokenizer, tokenizer_dir, gsm8k_train):
    root = tmp_path / "cache"
    # Thousands of records, so the preparation is still writing when it is killed (the bundled
    # sample has 160, which a fast machine tokenised before the first poll).
    big = tmp_path / "big.jsonl"
    lines = gsm8k_train.read_bytes().splitlines(keepends=True)
    big.write_bytes(b"".join(lines * -(-6000 // len(lines))))
    gsm8k_train = big
    child = subprocess.Popen([sys.executable, "-c", KILLER, str(tokenizer_dir), str(gsm8k_train), str(root)])
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size > 0 for p in root.glob("*.partial-*/tokens.bin")):
        assert child.poll() is None and time.monotonic() < deadline, "the preparation ended before it was killed"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert list(root.glob("*.partial-*")) and not list(root.glob("*/manifest.json"))
    data = settings(gsm8k_train, max_length=256)
    rows = prepare(data, tokenizer, scan(data, root), seed=0, root=root)
    assert not rows.reused and any("unfinished data cache" in note for note in rows.notes)
    assert not list(root.glob("*.partial-*"))
    assert rows.train_report.examples == scan(data, root).train_records


def test_memory_of_a_row_read_is_a_copy_not_a_mapping(tmp_path, tokenizer, gsm8k_train):
    data = settings(gsm8k_train, limit=100, max_length=256)
    rows = prepare(data, tokenizer, scan(data, tmp_path), seed=0, root=tmp_path)
    row = rows.train[0]
    assert row.input_ids.dtype == np.int64 and row.input_ids.flags.owndata
    with pytest.raises(IndexError):
        rows.train[len(rows.train)]


def test_an_unwritable_cache_folder_is_a_configuration_error(tmp_path, tokenizer, gsm8k_train):
    from llmc_cli.errors import ConfigError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    data = settings(gsm8k_train, limit=20, max_length=256)
    with pytest.raises(ConfigError, match="cannot be written") as info:
        prepare(data, tokenizer, scan(data, tmp_path / "memo"), seed=0, root=blocker / "cache")
    assert "--data-cache" in info.value.hint


STOPPABLE = """
import sys
from llmc_cli.data import prepare as p
p.PARALLEL_FROM, p.CHUNK = 1, 64
from llmc_cli.cli.app import main
sys.argv = ["llmc", "prepare", "--data", sys.argv[1], "--model", sys.argv[2], "--data-cache", sys.argv[3],
            "--workers", "2", "--max-length", "256"]
main()
"""


@pytest.fixture
def long_data(tmp_path, gsm8k_train) -> Path:
    """At least 6,000 records (the sample repeated where ../shared is absent): about 100 chunks of 64,
    so a preparation is still running when the test acts on it."""
    lines = gsm8k_train.read_text().splitlines()
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(lines * -(-6000 // len(lines))) + "\n")
    return path


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_parallel_preparation_cleanly(tmp_path, tiny_model_dir, long_data, signum):
    import psutil

    root = tmp_path / "cache"
    child = subprocess.Popen(
        [sys.executable, "-c", STOPPABLE, str(long_data), str(tiny_model_dir), str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size > 0 for p in root.glob("*.partial-*/tokens.bin")):
        assert child.poll() is None and time.monotonic() < deadline, "the preparation ended before the signal"
        time.sleep(0.05)
    workers = psutil.Process(child.pid).children(recursive=True)
    assert len([w for w in workers if "spawn_main" in " ".join(w.cmdline())]) == 2
    child.send_signal(signum)
    # a hang guard, not a time limit: workers still importing when the signal lands finish that first,
    # and on a busy 2-core machine that took over 60 s
    output, _ = child.communicate(timeout=180)
    assert child.returncode == 130, output
    assert "Stopped while preparing the data" in output and "Traceback" not in output
    assert not list(root.glob("*.partial-*")) and not list(root.glob("*/manifest.json"))
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers left running: {alive}"


def test_a_killed_preparation_worker_ends_in_a_data_error_not_a_hang(tmp_path, tiny_model_dir, long_data):
    import psutil

    root = tmp_path / "cache"
    child = subprocess.Popen(
        [sys.executable, "-c", STOPPABLE, str(long_data), str(tiny_model_dir), str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size > 0 for p in root.glob("*.partial-*/tokens.bin")):
        assert child.poll() is None and time.monotonic() < deadline, "the preparation ended before the kill"
        time.sleep(0.05)
    workers = [w for w in psutil.Process(child.pid).children() if "spawn_main" in " ".join(w.cmdline())]
    workers[0].kill()  # as the out-of-memory killer would
    output, _ = child.communicate(timeout=180)
    assert child.returncode == 3, output
    assert "worker stopped unexpectedly (exit code -9" in output and "--data-workers 1" in output
    assert "Traceback" not in output
    assert not list(root.glob("*.partial-*")) and not list(root.glob("*/manifest.json"))
