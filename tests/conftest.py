"""Shared fixtures: tiny models and tokenizers built at test time, never downloaded.

``../shared`` (the real Llama-2 tokenizer and full GSM8K) is used where present, as in
CI; without it the tests fall back to a tokenizer trained here and the GSM8K sample
shipped under tests/fixtures, so a clone of this repository alone passes.
"""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).with_name("fixtures")
SHARED = Path(os.environ.get("LLMC_SHARED", ROOT.parent / "shared"))
SHARED_TOKENIZER = SHARED / "tokenizers" / "llama2"
SHARED_GSM8K = SHARED / "data" / "gsm8k"
SAMPLE_TRAIN = FIXTURES / "gsm8k" / "train_sample.jsonl"
SAMPLE_TEST = FIXTURES / "gsm8k" / "test_sample.jsonl"

# A LlamaConfig small enough to train for dozens of steps in seconds on 2 cores.
TINY_SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=1024,
)


SPEC_VARIABLES = {
    "ENABLE_MONITORING", "CHECKPOINT_INTERVAL", "MAX_CHECKPOINTS", "ENABLE_EARLY_STOPPING",
    "EARLY_STOPPING_PATIENCE", "ENABLE_MIXED_PRECISION", "ENABLE_GRADIENT_CHECKPOINTING",
    "OPTIMIZE_MEMORY", "COMPILE_MODEL", "ENABLE_HYPERPARAMETER_TUNING", "HYPERPARAMETER_TRIALS",
    "ENABLE_DISTRIBUTED_TRAINING",
}  # fmt: skip


def _isolate(monkeypatch, cache: Path) -> None:
    """No LLMC_* or spec variables from the developer's shell, a private cache, no hub."""
    for name in list(os.environ):
        if name.startswith("LLMC_") or name in SPEC_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("LLMC_CACHE", str(cache))
    # Sample answers (engine/samples.py: a generation before and after every run) cost seconds a run on
    # these CPUs; the tests about them turn them on (test_samples.py, and the CLI's default path in e2e).
    monkeypatch.setenv("LLMC_SAMPLES", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_session_env(tmp_path_factory):
    """The same isolation for session- and module-scoped fixtures (reference runs, trained
    fixtures), which pytest sets up before any function-scoped fixture."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _isolate(monkeypatch, tmp_path_factory.getbasetemp() / "llmc-cache")
        yield


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """Isolation again for each test, undoing whatever the previous test set."""
    _isolate(monkeypatch, tmp_path_factory.getbasetemp() / "llmc-cache")


def wandb_history(run_dir):
    """Every history record of the offline runs under ``run_dir/wandb``, read from their .wandb files
    (a LevelDB-style log of protobuf records: 32 KiB blocks, 7-byte chunk headers)."""
    from wandb.proto import wandb_internal_pb2

    rows, ids = [], set()
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, pending = path.read_bytes(), 7, b""
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            pending, pos = pending + data[pos + 7 : pos + 7 + length], pos + 7 + length
            if kind in (1, 4):  # a full record, or the last chunk of one
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                pending = b""
                if record.WhichOneof("record_type") == "history":
                    rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                 for item in record.history.item})  # fmt: skip
                elif record.WhichOneof("record_type") == "run":
                    ids.add(record.run.run_id)
    return rows, ids


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def trained_tokenizer_dir(tmp_path_factory) -> Path:
    """A small BPE tokenizer trained on the GSM8K sample (with a chat template)."""
    from llmc_cli.demo.build import train_tokenizer

    folder = tmp_path_factory.mktemp("bpe-tokenizer")
    texts = [r["question"] + "\n" + r["answer"] for r in read_jsonl(SAMPLE_TRAIN)]
    train_tokenizer(texts, folder, vocab_size=1024)
    return folder


@pytest.fixture(scope="session")
def tokenizer_dir(trained_tokenizer_dir) -> Path:
    """The real Llama-2 tokenizer where ../shared has it, else the trained one."""
    return SHARED_TOKENIZER if (SHARED_TOKENIZER / "tokenizer.json").is_file() else trained_tokenizer_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A 2-layer Llama saved with save_pretrained, with its tokenizer beside it."""
    from transformers import AutoTokenizer

    from llmc_cli.demo.build import TinyShape, build_tiny_llama

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(folder)
    build_tiny_llama(folder, len(tokenizer), TinyShape(**TINY_SHAPE), seed=0)
    return folder


@pytest.fixture(scope="session")
def gsm8k_train() -> Path:
    """Full GSM8K train where ../shared has it, else the shipped sample."""
    full = SHARED_GSM8K / "train.jsonl"
    return full if full.is_file() else SAMPLE_TRAIN


def assert_same_adapter_weights(a: Path, b: Path) -> None:
    """The adapters saved in folders ``a`` and ``b`` hold exactly equal tensors."""
    import torch
    from safetensors.torch import load_file

    left, right = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


@pytest.fixture(scope="session")
def same_adapter():
    """``same_adapter(a, b)`` asserts two saved adapters are bit-identical."""
    return assert_same_adapter_weights


@pytest.fixture(scope="session")
def step_losses():
    """``step_losses(run_dir)`` -> {step: train loss}, the later record winning after a resume."""
    from llmc_cli.engine.record import by_step

    return lambda run_dir: {step: record["loss"] for step, record in by_step(run_dir).items()}


def write_run(
    folder,
    train,
    evals=(),
    *,
    lr=2e-4,
    ratio=5e-3,
    events=(),
    summary=None,
    config=None,
    total=None,
    resume_at=None,
    seed=0,
):
    """A run directory written by hand in the format a run writes (config.json, metrics.jsonl,
    events.jsonl, summary.json): ``train`` maps step -> true loss (3 % per-step noise is added),
    ``evals`` is [(step, loss)], ``resume_at`` re-logs the steps after it as a resumed run does."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    steps = sorted(train)
    total = total or steps[-1]
    flat = {"lr": lr, "max_steps": total, "epochs": 1.0, "preset": "quality", "lora_r": 16, "eval_every": 10,
            "checkpoint_interval": 100, "max_length": 512, "packing": True, **(config or {})}  # fmt: skip
    (folder / "config.json").write_text(json.dumps({"config": {"training": flat}, "sources": {"lr": "cli"}}))

    def step_line(step):
        warm = min(1.0, step / 3)
        return {"type": "train", "event": "StepEnded", "step": step, "total_steps": total,
                "loss": train[step] * (1 + 0.03 * rng.gauss(0, 1)), "lr": lr * warm, "grad_norm": 0.5,
                "clip_threshold": 1.0, "update_ratio": ratio, "tokens_per_s": 1000.0}  # fmt: skip

    lines, pending = [], dict(evals)
    for step in steps:
        lines.append(step_line(step))
        if step in pending:
            lines.append({"type": "eval", "event": "EvalEnded", "step": step, "eval_loss": pending[step]})
    if 0 in pending:
        lines.insert(0, {"type": "eval", "event": "EvalEnded", "step": 0, "eval_loss": pending[0]})
    if resume_at is not None:  # the killed attempt logged past its checkpoint; the resumed one logs again
        lines.append({"type": "resume", "event": "RunResumed", "step": resume_at})
        lines += [step_line(step) for step in steps if step > resume_at]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (folder / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps({"status": "completed", **summary}))
    return folder


@pytest.fixture(scope="session")
def make_run():
    """``make_run(folder, train, evals, ...)``: a run directory with known curves (:func:`write_run`)."""
    return write_run
