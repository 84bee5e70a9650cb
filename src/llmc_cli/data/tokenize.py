"""Tokenise rendered examples, build label masks, and apply the max-length policy."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmc_cli.data.formats import Example
from llmc_cli.data.templates import Rendered, render

IGNORE = -100
BATCH = 512


@dataclass(frozen=True)
class Encoded:
    """Token ids and labels of one example (labels are IGNORE outside the loss)."""

    input_ids: list[int]
    labels: list[int]


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

    def warnings(self, max_length: int) -> list[str]:
        """Human-readable notes on anything the user should know."""
        notes = []
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


def encode(
    tokenizer,
    examples: list[Example],
    max_length: int,
    *,
    overlong: str = "truncate",
    train_on_prompt: bool = False,
) -> tuple[list[Encoded], EncodeReport]:
    """Render, tokenise and mask examples; the first token of each example is never a target."""
    report = EncodeReport(examples=len(examples))
    encoded: list[Encoded] = []
    for start in range(0, len(examples), BATCH):
        chunk = examples[start : start + BATCH]
        rendered = [render(tokenizer, example, train_on_prompt) for example in chunk]
        for example, item, (ids, offsets) in zip(chunk, rendered, _tokenize(tokenizer, rendered), strict=True):
            report.not_prefix_stable += not item.prefix_stable
            result = _mask_and_fit(ids, offsets, item, max_length, overlong, report)
            if result is None:
                report.lines_dropped.append(example.line)
                continue
            encoded.append(result)
            report.kept += 1
            report.tokens += len(result.input_ids)
            report.target_tokens += sum(label != IGNORE for label in result.labels)
            report.longest = max(report.longest, len(result.input_ids))
    return encoded, report


def _tokenize(tokenizer, rendered: list[Rendered]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    bos = tokenizer.bos_token or ""
    # Templates that write the BOS token themselves must not get a second one.
    with_specials = [not (bos and item.text.startswith(bos)) for item in rendered]
    results: list[tuple[list[int], list[tuple[int, int]]] | None] = [None] * len(rendered)
    for flag in (True, False):
        indices = [i for i, value in enumerate(with_specials) if value is flag]
        if not indices:
            continue
        batch = tokenizer(
            [rendered[i].text for i in indices],
            add_special_tokens=flag,
            return_offsets_mapping=True,
        )
        for i, ids, offsets in zip(indices, batch["input_ids"], batch["offset_mapping"], strict=True):
            results[i] = (ids, offsets)
    return results  # type: ignore[return-value]


def _mask_and_fit(
    ids: list[int],
    offsets: list[tuple[int, int]],
    item: Rendered,
    max_length: int,
    overlong: str,
    report: EncodeReport,
) -> Encoded | None:
    labels = [
        token if end > begin and any(s <= begin < e for s, e in item.spans) else IGNORE
        for token, (begin, end) in zip(ids, offsets, strict=True)
    ]
    labels[0] = IGNORE
    if len(ids) > max_length:
        if overlong == "drop":
            report.dropped_too_long += 1
            return None
        ids, labels = ids[:max_length], labels[:max_length]
        report.truncated += 1
    if all(label == IGNORE for label in labels):
        report.dropped_no_target += 1
        return None
    return Encoded(ids, labels)
