"""Parameter counts from the config on the meta device equal those of the real model."""

from __future__ import annotations

import pytest
import torch

from llmc_cli.config.schema import LoraSettings
from llmc_cli.models.footprint import footprint


@pytest.mark.parametrize("tied", [True, False])
def test_counts_equal_the_real_models_tied_head_once(tied):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from llmc_cli.models.loading import add_lora

    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)  # fmt: skip
    lora = LoraSettings(lora_r=4, lora_alpha=8, target_modules="all-linear")
    counted = footprint(config, lora)
    real = AutoModelForCausalLM.from_config(config)
    assert counted.total_params == sum(p.numel() for p in real.parameters())
    head = real.get_output_embeddings()
    linear = sum(m.weight.numel() for m in real.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    assert counted.linear_params == linear
    adapted = add_lora(real, lora, gradient_checkpointing=False, quantized=False)
    assert counted.trainable_params == sum(p.numel() for p in adapted.parameters() if p.requires_grad)
