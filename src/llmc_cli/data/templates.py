"""Render examples to text with the chat template, and find the characters to learn from.

The tokenizer's own chat template is used when it has one; otherwise the family's
documented default (config/families.py) is installed on the tokenizer, so the saved
adapter's tokenizer renders prompts exactly as training did.

Response spans come from rendering prefixes: the assistant turn ``k`` covers the
characters between the rendering of ``messages[:k]`` with the generation prompt and the
rendering of ``messages[:k+1]``. Templates for which a prefix's rendering is not a
prefix of the whole are detected, and such examples are trained on whole (counted).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmc_cli.config.families import Family
from llmc_cli.data.formats import Example


@dataclass(frozen=True)
class Rendered:
    """An example as text plus the [start, end) character spans that carry the loss."""

    text: str
    spans: tuple[tuple[int, int], ...]
    prefix_stable: bool = True


def ensure_chat_template(tokenizer, family: Family) -> str:
    """Install the family's default template if the tokenizer has none; return its origin."""
    if getattr(tokenizer, "chat_template", None):
        return "tokenizer"
    tokenizer.chat_template = family.chat_template
    return f"llmc default for {family.name}"


def render(tokenizer, example: Example, train_on_prompt: bool = False) -> Rendered:
    """Render one example; spans cover the responses (or everything with train_on_prompt)."""
    if example.text is not None:
        text = example.text + (tokenizer.eos_token or "")
        return Rendered(text, ((0, len(text)),))
    messages = [{"role": role, "content": content} for role, content in example.messages]
    text = _apply(tokenizer, messages, generation_prompt=False)
    if train_on_prompt:
        return Rendered(text, ((0, len(text)),))
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start_text = _apply(tokenizer, messages[:index], generation_prompt=True)
        # The last turn's prefix is the whole conversation, already rendered.
        last = index == len(messages) - 1
        end_text = text if last else _apply(tokenizer, messages[: index + 1], generation_prompt=False)
        if not (text.startswith(end_text) and end_text.startswith(start_text)):
            return Rendered(text, ((0, len(text)),), prefix_stable=False)
        spans.append((len(start_text), len(end_text)))
    return Rendered(text, tuple(spans))


def chat_prompt(tokenizer, user: str) -> str:
    """One user turn with the assistant's header after it: what generation continues from."""
    return _apply(tokenizer, [{"role": "user", "content": user}], generation_prompt=True)


def _apply(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
