"""Parameter counts of a model and its LoRA adapter, from the config alone (no weights read).

The model is built on the meta device (accelerate's ``init_empty_weights``) and the adapter
attached exactly as training attaches it, so the trainable count is peft's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmc_cli.config.schema import LoraSettings


@dataclass(frozen=True)
class Footprint:
    total_params: int  # base model, shared (tied) tensors counted once
    trainable_params: int  # the LoRA adapter
    linear_params: int = 0  # weights of the base's nn.Linear layers but the output head (what 4/8-bit shrinks)


def footprint(model_config, lora: LoraSettings) -> Footprint:
    """Count the base model's and the adapter's parameters without allocating them.

    Raises:
        ModelError: the LoRA targets match no module of this model.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from llmc_cli.models.loading import add_lora

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(model_config)
    # Tied outside the context: inside it, the tie re-registers the head as a new meta parameter and
    # the shared matrix would be counted twice.
    model.tie_weights()
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    with init_empty_weights():
        adapted = add_lora(model, lora, gradient_checkpointing=False, quantized=False)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    return Footprint(total, trainable, linear)
