"""Tokenise rendered examples, build label masks, and apply the max-length policy.

:func:`encode_arrays` is the core: for a chunk of examples it returns each one's token ids
and target mask as numpy arrays plus flags saying what happened to it; the data cache
(data/prepare.py) writes those arrays straight to disk, and :func:`encode` turns them into
:class:`Encoded` lists for small in-memory uses and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmc_cli.data.formats import Example
from llmc_cli.data.templates import Rendered, render

IGNORE = -100
BATCH = 512
MAX_LINES_KEPT = 100  # dropped-example lines a report keeps (the count is exact)
LONG_SHARE = 0.01  # suggest a max_length when more than this share of examples exceed it
LENGTH_STEP = 64

# Flags of one example's outcome (several may be set: a truncated example can lose its target).
TRUNCATED = 1
DROPPED_TOO_LONG = 2
DROPPED_NO_TARGET = 4
NOT_PREFIX_STABLE = 8
DROPPED = DROPPED_TOO_LONG | DROPPED_NO_TARGET


@dataclass(frozen=True)
class Encoded:
    """Token ids and labels of one example (labels are IGNORE outside the loss)."""

    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class EncodedArrays:
    """One example's outcome: ``flags``, and when it is kept, its ids and target mask (1 = in the loss)."""

    flags: int
    full_length: int  # tokens before truncation or dropping
    ids: np.ndarray | None = None
    mask: np.ndarray | None = None


@dataclass
class EncodeReport:
    """What happened to the examples on the way to tokens."""

    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_target: int = 0
    not_prefix_stable: int = 0
    tokens: int = 0
    target_tokens: int = 0
    longest: int = 0
    lines_dropped: list[int] = field(default_factory=list)
    lengths: dict[str, int] = field(default_factory=dict)  # p50/p95/p99/max tokens, before truncation

    def add(self, line: int, outcome: EncodedArrays) -> None:
        """Count one example."""
        flags = outcome.flags
        self.examples += 1
        self.truncated += bool(flags & TRUNCATED)
        self.dropped_too_long += bool(flags & DROPPED_TOO_LONG)
        self.dropped_no_target += bool(flags & DROPPED_NO_TARGET)
        self.not_prefix_stable += bool(flags & NOT_PREFIX_STABLE)
        if flags & DROPPED:
            if len(self.lines_dropped) < MAX_LINES_KEPT:
                self.lines_dropped.append(line)
            return
        assert outcome.ids is not None and outcome.mask is not None
        self.kept += 1
        self.tokens += len(outcome.ids)
        self.target_tokens += int(outcome.mask.sum())
        self.longest = max(self.longest, len(outcome.ids))

    def warnings(self, max_length: int) -> list[str]:
        """Human-readable notes on anything the user should know."""
        notes = []
        too_long = self.truncated + self.dropped_too_long
        if self.lengths and too_long > LONG_SHARE * self.examples:
            notes.append(
                f"{too_long / self.examples:.1%} of examples are longer than max_length={max_length} "
                f"(token lengths: median {self.lengths['p50']}, p99 {self.lengths['p99']}, max {self.lengths['max']}); "
                f"--max-length {suggest_max_length(self.lengths['p99'])} would keep 99% of them whole."
            )
        if self.truncated:
            notes.append(f"{self.truncated} examples were longer than max_length={max_length} and were truncated.")
        if self.dropped_too_long:
            notes.append(
                f"{self.dropped_too_long} examples were longer than max_length={max_length} and were dropped "
                "(--overlong drop)."
            )
        if self.dropped_no_target:
            notes.append(
                f"{self.dropped_no_target} examples had no response tokens within max_length and were dropped "
                f"(first lines: {self.lines_dropped[:5]}); raise --max-length to keep them."
            )
        if self.not_prefix_stable:
            notes.append(
                f"{self.not_prefix_stable} examples: the chat template is not prefix-stable, so they were "
                "trained on their whole text."
            )
        return notes


def length_stats(lengths: np.ndarray) -> dict[str, int]:
    """Median, p95, p99 and longest of token lengths (empty for no examples)."""
    if len(lengths) == 0:
        return {}
    p50, p95, p99 = (int(np.percentile(lengths, q, method="higher")) for q in (50, 95, 99))
    return {"p50": p50, "p95": p95, "p99": p99, "max": int(lengths.max())}


def suggest_max_length(p99: int) -> int:
    """The p99 length rounded up to a multiple of 64."""
    return max(LENGTH_STEP, -(-p99 // LENGTH_STEP) * LENGTH_STEP)


def encode(
    tokenizer,
    examples: list[Example],
    max_length: int,
    *,
    overlong: str = "truncate",
    train_on_prompt: bool = False,
) -> tuple[list[Encoded], EncodeReport]:
    """Render, tokenise and mask examples in memory; the first token of each example is never a target."""
    report = EncodeReport()
    encoded: list[Encoded] = []
    full_lengths = []
    for start in range(0, len(examples), BATCH):
        chunk = examples[start : start + BATCH]
        for example, outcome in zip(
            chunk, encode_arrays(tokenizer, chunk, max_length, overlong, train_on_prompt), strict=True
        ):
            report.add(example.line, outcome)
            full_lengths.append(outcome.full_length)
            if not outcome.flags & DROPPED:
                labels = np.where(outcome.mask.astype(bool), outcome.ids, IGNORE)
                encoded.append(Encoded(outcome.ids.tolist(), labels.tolist()))
    report.lengths = length_stats(np.array(full_lengths, dtype=np.int64))
    return encoded, report


def encode_arrays(
    tokenizer, examples: list[Example], max_length: int, overlong: str, train_on_prompt: bool
) -> list[EncodedArrays]:
    """Render, tokenise and mask one chunk of examples (what a preparation worker runs)."""
    rendered = [render(tokenizer, example, train_on_prompt) for example in examples]
    return [
        _mask_and_fit(ids, offsets, item, max_length, overlong)
        for item, (ids, offsets) in zip(rendered, tokenize_texts(tokenizer, rendered), strict=True)
    ]


@dataclass(frozen=True)
class EncodedChunk:
    """A chunk of examples encoded into flat arrays: cheap to send between processes and to write.

    ``flags``, ``lengths`` (0 when dropped) and ``targets`` have one entry per example;
    ``ids`` and ``mask`` hold the kept examples' tokens back to back.
    """

    flags: np.ndarray
    full_lengths: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray
    ids: np.ndarray
    mask: np.ndarray


def encode_chunk(
    tokenizer, examples: list[Example], max_length: int, overlong: str, train_on_prompt: bool, dtype: str = "<i8"
) -> EncodedChunk:
    """:func:`encode_arrays` of a chunk, as flat arrays with token ids in ``dtype``."""
    outcomes = encode_arrays(tokenizer, examples, max_length, overlong, train_on_prompt)
    kept = [o for o in outcomes if not o.flags & DROPPED]
    return EncodedChunk(
        flags=np.array([o.flags for o in outcomes], dtype=np.uint8),
        full_lengths=np.array([o.full_length for o in outcomes], dtype=np.int32),
        lengths=np.array([0 if o.flags & DROPPED else len(o.ids) for o in outcomes], dtype=np.int32),
        targets=np.array([0 if o.flags & DROPPED else int(o.mask.sum()) for o in outcomes], dtype=np.int32),
        ids=np.concatenate([o.ids for o in kept]).astype(dtype) if kept else np.zeros(0, dtype=dtype),
        mask=np.concatenate([o.mask for o in kept]) if kept else np.zeros(0, dtype=np.uint8),
    )


def tokenize_texts(tokenizer, rendered: list[Rendered]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Token ids and character offsets of each rendered text (BOS added unless the text starts with it)."""
    bos = tokenizer.bos_token or ""
    # Templates that write the BOS token themselves must not get a second one.
    with_specials = [not (bos and item.text.startswith(bos)) for item in rendered]
    results: list[tuple[list[int], list[tuple[int, int]]] | None] = [None] * len(rendered)
    for flag in (True, False):
        indices = [i for i, value in enumerate(with_specials) if value is flag]
        if not indices:
            continue
        texts = [rendered[i].text for i in indices]
        for i, pair in zip(indices, _ids_and_offsets(tokenizer, texts, flag), strict=True):
            results[i] = pair
    return results  # type: ignore[return-value]


def _ids_and_offsets(tokenizer, texts: list[str], add_special_tokens: bool):
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch") or backend.truncation or backend.padding:
        batch = tokenizer(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return list(zip(batch["input_ids"], batch["offset_mapping"], strict=True))
    # The Rust tokenizer directly, as transformers' own fast path calls it, without building
    # a BatchEncoding per text (a tenth of preparation time). tests/unit/data checks equality.
    split = getattr(tokenizer, "split_special_tokens", False)
    if backend.encode_special_tokens != split:
        backend.encode_special_tokens = split
    encodings = backend.encode_batch(texts, add_special_tokens=add_special_tokens)
    return [(encoding.ids, encoding.offsets) for encoding in encodings]


def _mask_and_fit(
    ids: list[int], offsets: list[tuple[int, int]], item: Rendered, max_length: int, overlong: str
) -> EncodedArrays:
    flags = 0 if item.prefix_stable else NOT_PREFIX_STABLE
    token_ids = np.asarray(ids, dtype=np.int64)
    full_length = len(token_ids)
    mask = _target_mask(np.asarray(offsets, dtype=np.int64).reshape(-1, 2), item.spans)
    mask[0] = 0
    if len(token_ids) > max_length:
        if overlong == "drop":
            return EncodedArrays(flags | DROPPED_TOO_LONG, full_length)
        token_ids, mask = token_ids[:max_length], mask[:max_length]
        flags |= TRUNCATED
    if not mask.any():
        return EncodedArrays(flags | DROPPED_NO_TARGET, full_length)
    return EncodedArrays(flags, full_length, token_ids, mask)


def _target_mask(offsets: np.ndarray, spans: tuple[tuple[int, int], ...]) -> np.ndarray:
    """1 where a token is non-empty and starts inside one of ``spans`` (sorted, disjoint), else 0."""
    begin, end = offsets[:, 0], offsets[:, 1]
    if not spans:
        return np.zeros(len(offsets), dtype=np.uint8)
    starts = np.fromiter((s for s, _ in spans), dtype=np.int64, count=len(spans))
    ends = np.fromiter((e for _, e in spans), dtype=np.int64, count=len(spans))
    if len(spans) > 1 and (np.any(starts[1:] < ends[:-1]) or np.any(np.diff(starts) < 0)):
        inside = ((starts[None, :] <= begin[:, None]) & (begin[:, None] < ends[None, :])).any(axis=1)
    else:
        which = np.searchsorted(starts, begin, side="right") - 1
        inside = (which >= 0) & (begin < ends[np.maximum(which, 0)])
    return (inside & (end > begin)).astype(np.uint8)
