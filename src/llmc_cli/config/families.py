"""The model families llmc knows: hub ids, architecture names and default chat templates.

A family decides which preset table applies and which chat template is used when a
tokenizer ships none. Models of an unknown architecture still train: they use the
``generic`` family (all linear layers adapted, the ChatML template).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Templates are written so that rendering a conversation's prefix gives a prefix of the
# whole rendering; the label mask relies on that (see data/templates.py).
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ '[INST] ' + message['content'] + '\n' }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% endfor %}"
)
PHI_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        name: Key used by presets and ``--model`` aliases.
        hub_id: The instruct model ``--model NAME`` downloads.
        model_types: ``config.json`` ``model_type`` values that belong to the family.
        chat_template: Jinja template used when the tokenizer has none.
        billions: Parameter count of ``hub_id`` in billions (hardware-based choice).
        shape: ``hub_id``'s architecture, as its published ``config.json`` gives it: what
            ``llmc doctor`` estimates memory from without downloading anything.
    """

    name: str
    hub_id: str
    model_types: tuple[str, ...]
    chat_template: str
    billions: float
    shape: dict = field(default_factory=dict)


def _shape(model_type, hidden, layers, heads, kv_heads, intermediate, vocab, tied, **extra) -> dict:
    return dict(
        model_type=model_type, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=intermediate, vocab_size=vocab, tie_word_embeddings=tied,
        **extra,
    )  # fmt: skip


def family_config(family: Family):
    """A transformers config of the family's model, built from its shape (nothing is downloaded)."""
    from transformers import AutoConfig

    shape = dict(family.shape)
    return AutoConfig.for_model(shape.pop("model_type"), **shape)


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "tinyllama",
            "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
            ("llama",),
            ZEPHYR_TEMPLATE,
            1.1,
            _shape("llama", 2048, 22, 32, 4, 5632, 32000, tied=False),
        ),
        Family(
            "phi",
            "microsoft/Phi-4-mini-instruct",
            ("phi", "phi3", "phimoe"),
            PHI_TEMPLATE,
            3.8,
            _shape("phi3", 3072, 32, 24, 8, 8192, 200064, tied=True, partial_rotary_factor=0.75),
        ),
        Family(
            "mistral",
            "mistralai/Mistral-7B-Instruct-v0.3",
            ("mistral", "mixtral"),
            MISTRAL_TEMPLATE,
            7.2,
            _shape("mistral", 4096, 32, 32, 8, 14336, 32768, tied=False),
        ),
        Family(
            "qwen",
            "Qwen/Qwen2.5-1.5B-Instruct",
            ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"),
            CHATML_TEMPLATE,
            1.5,
            _shape("qwen2", 1536, 28, 12, 2, 8960, 151936, tied=True),
        ),
        Family("generic", "", (), CHATML_TEMPLATE, 0.0),
    )
}


def family_for_model_type(model_type: str | None) -> Family:
    """The family of a ``config.json`` ``model_type``; ``generic`` when unknown."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    return FAMILIES["generic"]


def family_for_hub_id(hub_id: str) -> Family:
    """Guess a family from a hub id's name, for models not yet downloaded."""
    lowered = hub_id.lower()
    for family in FAMILIES.values():
        if family.name != "generic" and family.name in lowered:
            return family
    if "llama" in lowered:
        return FAMILIES["tinyllama"]
    return FAMILIES["generic"]
