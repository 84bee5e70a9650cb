"""Step time prediction: the FLOP count against PyTorch's own counter, and the layer probe."""

import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from llmc_cli.config.schema import LoraSettings
from llmc_cli.models.loading import add_lora
from llmc_cli.optimize.layerprobe import measure_layer
from llmc_cli.optimize.memory import model_facts
from llmc_cli.optimize.throughput import StepWork, predict, step_flops

CONFIG = dict(
    vocab_size=1000,
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_step_flops_match_what_pytorch_counts_for_a_lora_step(checkpointing):
    config = LlamaConfig(**CONFIG, attn_implementation="eager")
    lora = LoraSettings(lora_r=8, target_modules="all-linear", lora_dropout=0.0)
    torch.manual_seed(0)
    model = add_lora(LlamaForCausalLM(config), lora, gradient_checkpointing=checkpointing, quantized=False)
    model.train()
    tokens = 96
    ids = torch.randint(0, 1000, (1, tokens))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    # Eager attention computes every pair's score (masked ones too): context = the whole row.
    # The model's own loss projects every position but the last through the head.
    work = StepWork(1, tokens, tokens - 1, tokens, checkpointing)
    predicted = step_flops(model_facts(config, lora), work)
    assert predicted == pytest.approx(counter.get_total_flops(), rel=0.03)


def test_checkpointing_adds_one_forward_and_targets_only_pay_for_the_head():
    config = LlamaConfig(**CONFIG)
    facts = model_facts(config, LoraSettings(lora_r=8))
    plain = step_flops(facts, StepWork(4, 2048, 1000, 100, False))
    again = step_flops(facts, StepWork(4, 2048, 1000, 100, True))
    forward = 2 * facts.linear_params * 2048 + 4 * facts.layers * facts.hidden_size * 100 * 2048
    assert again - plain == pytest.approx(forward)
    fewer_targets = step_flops(facts, StepWork(4, 2048, 500, 100, False))
    assert plain - fewer_targets == pytest.approx(4 * facts.hidden_size * facts.vocab_size * 500)


def test_the_probe_measures_this_machine_and_the_prediction_scales_with_it():
    state = torch.random.get_rng_state()
    started = time.perf_counter()
    speed = measure_layer(256, "fp32", seconds=0.2)
    assert time.perf_counter() - started < 10 and 1e8 < speed < 1e14
    assert torch.equal(torch.random.get_rng_state(), state)  # planning leaves training's random stream alone
    facts = model_facts(LlamaConfig(**CONFIG), LoraSettings(lora_r=8))
    work = StepWork(4, 2048, 1000, 100, False)
    one, two = predict(facts, work, speed, 0.5, 10, "test"), predict(facts, work, 2 * speed, 0.5, None, "test")
    assert one.per_step_s == pytest.approx(2 * two.per_step_s) and one.total_s == pytest.approx(10 * one.per_step_s)
    assert two.total_s is None and one.step_flops == step_flops(facts, work)


def test_only_a_run_that_trained_a_minute_pays_for_the_peak_probe():
    from types import SimpleNamespace

    from llmc_cli.optimize.throughput import PEAK_PROBE_FROM_S, run_peak

    model = SimpleNamespace(config=SimpleNamespace(hidden_size=64))
    assert run_peak(model, "fp32", "cpu", PEAK_PROBE_FROM_S - 1) is None
    assert run_peak(SimpleNamespace(), "fp32", "cpu", PEAK_PROBE_FROM_S) is None  # no hidden size: no probe
    assert run_peak(model, "fp32", "cpu", PEAK_PROBE_FROM_S) > 1e8
