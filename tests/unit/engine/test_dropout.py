"""FastDropout behaves as inverted dropout, and replaces PEFT's LoRA dropout modules."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from llmc_cli.optimize.dropout import FastDropout, use_fast_lora_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drop_rate_scale_and_independence(p):
    torch.manual_seed(0)
    dropout = FastDropout(p).train()
    x = torch.ones(1000, 1001)  # odd size: the last 64-bit draw is only partly used
    first, second = dropout(x), dropout(x)
    dropped = (first == 0).float().mean().item()
    assert abs(dropped - p) < 0.005
    assert torch.allclose(first[first != 0], torch.tensor(1 / (1 - p)))
    assert abs(first.mean().item() - 1.0) < 0.01  # unbiased in expectation
    assert not torch.equal(first, second)  # a fresh mask every call
    # Elements of one 64-bit draw are independent: neighbours are dropped together only by chance.
    together = ((first[:, :-1] == 0) & (first[:, 1:] == 0)).float().mean().item()
    assert abs(together - p * p) < 0.004


def test_eval_mode_is_identity_and_gradients_follow_the_mask():
    dropout = FastDropout(0.3)
    x = torch.randn(64, 64, requires_grad=True)
    assert dropout.eval()(x) is x
    out = dropout.train()(x)
    out.sum().backward()
    assert torch.equal(x.grad == 0, out == 0)
    with pytest.raises(ValueError, match="dropout probability"):
        FastDropout(1.0)


def test_peft_lora_dropouts_are_swapped_and_the_adapter_still_saves(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_dropout=0.1, target_modules="all-linear"))
    assert use_fast_lora_dropout(model) == 2 * 7
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    model(input_ids=torch.randint(0, 100, (2, 8))).logits.sum().backward()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
