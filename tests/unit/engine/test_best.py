"""The best adapter so far: kept at each new lowest eval loss, carried by checkpoints, put back when clearly better."""

import math

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from transformers import LlamaConfig, LlamaForCausalLM

from llmc_cli.engine.best import BestAdapter


def tiny_lora():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    return get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))


def perturb(model, value):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(value)


def test_keeps_the_lowest_puts_it_back_and_survives_a_checkpoint(tmp_path):
    model, best = tiny_lora(), BestAdapter()
    assert not best.beats(1.0)  # nothing kept yet
    perturb(model, 0.1)
    best.note(4, 1.00, model)
    perturb(model, 0.2)
    best.note(8, 1.20, model)  # worse: not kept
    best.note(9, math.nan, model)  # not a loss: not kept
    assert (best.step, best.loss) == (4, 1.00)
    assert not best.beats(1.005) and best.beats(1.02) and best.beats(math.inf)  # 1 % tolerance
    best.save(tmp_path)
    again = BestAdapter()
    again.load(tmp_path)
    assert (again.step, again.loss) == (4, 1.00)
    again.put_back(model)
    restored = get_peft_model_state_dict(model)
    assert all(torch.equal(restored[k], best.weights[k]) for k in best.weights)
    assert all(abs(float(v.flatten()[0]) - 0.1) < 1e-6 for k, v in restored.items() if "lora_B" in k)
    empty = BestAdapter()
    empty.load(tmp_path / "no-checkpoint")
    assert empty.step is None
