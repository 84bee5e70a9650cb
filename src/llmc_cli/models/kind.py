"""Is this a model llmc can fine-tune? A causal (left-to-right) language model whose embedding
covers every id its tokenizer can produce. Checked from ``config.json`` and the tokenizer,
before any weight is loaded, so the wrong kind of model ends in one message (exit 4) instead
of a silent useless adapter or an ``IndexError`` mid-run.
"""

from __future__ import annotations

from typing import Any

from llmc_cli.errors import ModelError

SUPPORTED = (
    "llmc fine-tunes causal (decoder-only) language models: the TinyLlama, Llama, Mistral, Qwen and Phi "
    "families, or any local folder whose config maps to AutoModelForCausalLM (e.g. LlamaForCausalLM)."
)
NOT_LM_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMaskedLM")


def load_config(location: str):
    """The model's configuration (``config.json``), as transformers reads it."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"Cannot read the model configuration of {location}: {exc}",
            hint="Check that config.json is complete and names a model_type this transformers version knows.",
        ) from None


def check_causal(config: Any, location: str) -> None:
    """Refuse encoder-decoder models, bidirectional encoders and checkpoints without an LM head."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    architectures = list(getattr(config, "architectures", None) or [])
    named = ", ".join(architectures) or str(model_type)
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"{location} is an encoder-decoder (sequence-to-sequence) model ({named}), not a causal language model.",
            hint=SUPPORTED,
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(
            f"{location} is a '{model_type}' model ({named}), which has no causal language-model head "
            "in transformers: it cannot generate text left to right.",
            hint=SUPPORTED,
        )
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        raise ModelError(
            f"{location} is a bidirectional encoder ({named}): each token attends to the tokens after it, "
            "so an adapter trained on it cannot generate text.",
            hint=SUPPORTED,
        )
    if architectures and all(name.endswith(NOT_LM_HEADS) for name in architectures):
        raise ModelError(
            f"{location} holds a {named} checkpoint: its head is not a language-model head, so the LM head "
            "would start from random weights.",
            hint="Use the base or instruction-tuned checkpoint of this model (architectures ...ForCausalLM).",
        )


def check_vocabulary(config: Any, tokenizer: Any, location: str) -> None:
    """Refuse a tokenizer that produces ids past the model's embedding (a smaller one is fine:
    many models pad their embedding to a multiple of 64 or 128)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    embedded = getattr(text, "vocab_size", None)
    if embedded and len(tokenizer) > embedded:
        raise ModelError(
            f"The tokenizer of {location} has {len(tokenizer):,} tokens but the model embeds only {embedded:,}: "
            f"ids {embedded:,} and above would index past the embedding.",
            hint="Use the tokenizer saved with these weights, or resize the model first "
            "(model.resize_token_embeddings(len(tokenizer)); model.save_pretrained(folder)).",
        )
