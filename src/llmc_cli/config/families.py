"""The model families llmc knows: hub ids, architecture names and default chat templates.

A family decides which preset table applies and which chat template is used when a
tokenizer ships none. Models of an unknown architecture still train: they use the
``generic`` family (all linear layers adapted, the ChatML template).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """

    name: str
    hub_id: str
    model_types: tuple[str, ...]
    chat_template: str
    billions: float


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("tinyllama", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", ("llama",), ZEPHYR_TEMPLATE, 1.1),
        Family("phi", "microsoft/Phi-4-mini-instruct", ("phi", "phi3", "phimoe"), PHI_TEMPLATE, 3.8),
        Family("mistral", "mistralai/Mistral-7B-Instruct-v0.3", ("mistral", "mixtral"), MISTRAL_TEMPLATE, 7.2),
        Family(
            "qwen", "Qwen/Qwen2.5-1.5B-Instruct", ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"), CHATML_TEMPLATE, 1.5
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
