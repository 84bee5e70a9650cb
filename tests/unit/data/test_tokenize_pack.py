import pytest
import torch
from transformers import AutoTokenizer

from llmc_cli.config.families import FAMILIES
from llmc_cli.data.formats import Example
from llmc_cli.data.packing import Collator, pack
from llmc_cli.data.templates import ensure_chat_template
from llmc_cli.data.tokenize import IGNORE, encode

QA = Example(1, messages=(("user", "What is 2+2?"), ("assistant", "It is 4.")))
CHAT = Example(2, messages=(("user", "Hi"), ("assistant", "Hello!"), ("user", "Name?"), ("assistant", "llmc.")))


@pytest.fixture(scope="module", params=["tokenizer_dir", "trained_tokenizer_dir"])
def tokenizer(request):
    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(request.param))
    tok.pad_token = tok.pad_token or tok.eos_token
    ensure_chat_template(tok, FAMILIES["tinyllama"])
    return tok


def targets(tokenizer, item):
    return tokenizer.decode([t for t in item.labels if t != IGNORE])


def test_only_responses_carry_loss(tokenizer):
    (qa, chat), report = encode(tokenizer, [QA, CHAT], 512)
    assert targets(tokenizer, qa).strip() == "It is 4.</s>"
    assert targets(tokenizer, chat).replace("\n", "").replace(" ", "") == "Hello!</s>llmc.</s>"
    assert "What" not in targets(tokenizer, qa)
    assert report.kept == 2 and report.not_prefix_stable == 0


def test_train_on_prompt_and_first_token_never_a_target(tokenizer):
    (item,), _ = encode(tokenizer, [QA], 512, train_on_prompt=True)
    assert item.labels[0] == IGNORE
    assert item.labels[1:] == item.input_ids[1:]


def test_overlong_examples_are_truncated_or_dropped_and_counted(tokenizer):
    long = Example(3, messages=(("user", "word " * 300), ("assistant", "done")))
    kept, report = encode(tokenizer, [QA, long], 32)
    assert len(kept) == 1 and report.dropped_no_target == 1 and report.truncated == 1
    assert report.lines_dropped == [3]
    kept, report = encode(tokenizer, [QA, long], 32, overlong="drop")
    assert len(kept) == 1 and report.dropped_too_long == 1


def test_text_examples_end_with_eos(tokenizer):
    (item,), _ = encode(tokenizer, [Example(1, text="plain text")], 64)
    assert item.input_ids[-1] == tokenizer.eos_token_id


def test_packing_keeps_every_example_once_within_budget(tokenizer):
    examples = [
        Example(i, messages=(("user", "q" * (i % 17 + 1)), ("assistant", "a" * (i % 5 + 1)))) for i in range(60)
    ]
    encoded, _ = encode(tokenizer, examples, 64)
    rows = pack(encoded, 64, seed=0)
    assert all(len(row.input_ids) <= 64 for row in rows)
    assert sum(row.examples for row in rows) == 60
    assert sorted(len(e.input_ids) for e in encoded) == sorted(
        b - a for row in rows for a, b in _segments(row.position_ids)
    )
    assert len(rows) < 60  # several examples share rows


def _segments(positions):
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    return list(zip(starts, starts[1:], strict=False))


def test_packed_rows_do_not_attend_across_examples(tiny_model_dir):
    """Logits of each example inside a packed, padded row equal its logits alone."""
    from transformers import AutoModelForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ensure_chat_template(tok, FAMILIES["tinyllama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    encoded, _ = encode(tok, [QA, CHAT, Example(3, text="A third, longer example " * 3)], 256)
    row = pack(encoded, 256, seed=1)[0]
    batch = Collator(pad_id=0, packed=True)([row, pack(encoded[:1], 256, 0)[0]])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        for start, end in _segments(row.position_ids):
            alone = model(input_ids=torch.tensor([row.input_ids[start:end]])).logits[0]
            torch.testing.assert_close(packed[start:end], alone, rtol=1e-4, atol=1e-4)


def test_length_percentiles_and_a_max_length_suggestion_when_many_examples_are_cut(tokenizer):
    from llmc_cli.data.tokenize import suggest_max_length

    examples = [QA] * 60 + [Example(9, messages=(("user", "word " * 60), ("assistant", "done")))] * 40
    _, report = encode(tokenizer, examples, 48)
    lengths = report.lengths
    assert lengths["p50"] < 48 < lengths["p99"] == lengths["max"]
    (note,) = [n for n in report.warnings(48) if "would keep 99%" in n]
    assert f"--max-length {suggest_max_length(lengths['p99'])}" in note and "40.0% of examples" in note
    assert suggest_max_length(65) == 128 and suggest_max_length(64) == 64 and suggest_max_length(3) == 64
    _, fine = encode(tokenizer, [QA] * 10, 512)
    assert not [n for n in fine.warnings(512) if "would keep" in n]


def test_batch_width_rounds_up_to_the_multiple_within_max_length_and_changes_no_logit(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from llmc_cli.data.packing import Row

    def row(n):
        return Row(list(range(1, n + 1)), [IGNORE] + list(range(2, n + 1)), list(range(n)), 1)

    rounded = Collator(pad_id=0, packed=False, multiple=64, limit=200)
    assert [rounded.width(n) for n in (1, 64, 65, 190, 195, 250)] == [64, 64, 128, 192, 200, 250]
    plain, batch = Collator(pad_id=0, packed=False)([row(70), row(9)]), rounded([row(70), row(9)])
    assert batch["input_ids"].shape == (2, 128) and plain["input_ids"].shape == (2, 70)
    assert batch["n_tokens"] == plain["n_tokens"] == 79 and batch["labels"][:, 70:].eq(IGNORE).all()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    with torch.no_grad():
        a = model(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits
        b = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :70]
    torch.testing.assert_close(a[0], b[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a[1, :9], b[1, :9], rtol=1e-4, atol=1e-4)
