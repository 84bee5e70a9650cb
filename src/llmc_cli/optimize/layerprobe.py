"""How fast this machine trains a decoder layer: the speed the dry run's step-time prediction divides by.

A bare matmul's speed says little about a training step: on a 2-core Xeon with AMX, bf16 matmuls
ran 2.4 TFLOP/s against 0.87 on a 2-core AMD EPYC with avx512_bf16, yet whole training steps were
only about 12 % faster, so one calibration factor on top of the matmul figure was 30-70 % off on
one machine or the other. This probe runs what a step is made of: one Llama-shaped decoder layer of
the model's width (RMSNorm, rotary attention through SDPA, the SiLU MLP), frozen, in the run's
dtype and autocast, with a LoRA adapter of the run's rank on every linear layer (and the CPU's
``FastDropout``), forward and backward over one row, as training runs it. Its FLOPs are counted by
the same formula as a step's (:func:`llmc_cli.optimize.throughput.step_flops`), so
``flops / seconds`` is the machine's training speed for this width; what the probe does not do
(the output head and loss, the optimizer, data loading, Python between micro-batches) is the
calibrated ``STEP_EFFICIENCY``.

Weights are random (no checkpoint is read). About half a second; memoised per process and shape.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from functools import cache

from llmc_cli.optimize.memory import ModelFacts
from llmc_cli.optimize.throughput import StepWork, step_flops

PROBE_SECONDS = 0.5
PROBE_VOCAB = 256  # the probe's head is not what it measures: keep it negligible
HEAD_DIM = 64
WEIGHT = 0.01  # every probe weight: no denormals, no NaN


def probe_tokens(hidden: int) -> int:
    """Tokens of the probe's row: a packed row's worth, fewer for wide layers (a 7B layer is ~200M weights)."""
    return 512 if hidden <= 1024 else 256 if hidden <= 2048 else 128


def measure_layer(hidden: int, precision: str, device: str = "cpu", lora_r: int = 16,
                  seconds: float = PROBE_SECONDS) -> float:  # fmt: skip
    """FLOP/s of a LoRA training step through one decoder layer ``hidden`` wide, in ``precision``
    ("bf16", "fp16", "fp32") on ``device``: the best of repeated forward + backward passes over about
    ``seconds`` (at least two timed; one slow pass, as an emulated dtype gives, ends it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmc_cli.models.loading import DTYPES

    width = max(HEAD_DIM, hidden)
    heads = max(1, width // HEAD_DIM)
    config = LlamaConfig(
        hidden_size=heads * HEAD_DIM,
        intermediate_size=max(HEAD_DIM, round(width * 8 / 3 / HEAD_DIM) * HEAD_DIM),
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=PROBE_VOCAB,
        max_position_embeddings=4096,
        use_cache=False,
        attn_implementation="sdpa",
    )
    dtype = DTYPES[precision]
    devices = [torch.cuda.current_device()] if device == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # random ids and dropout: a caller's stream is left alone
        with torch.device(device), _no_init():
            base = LlamaForCausalLM._from_config(config, dtype=dtype)
        with torch.no_grad():  # dense kernels take as long whatever the values: a constant, not a costly random init
            for weight in base.parameters():
                if weight.dim() > 1:
                    weight.fill_(WEIGHT)
        return _timed(base, config, lora_r, precision, device, seconds)


def _no_init():
    """Transformers' switch that skips weight initialisation (seconds for a 7B-wide layer), where it has one."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        return nullcontext()
    return no_init_weights()


def _timed(base, config, lora_r: int, precision: str, device: str, seconds: float) -> float:
    import torch

    from llmc_cli.config.schema import LoraSettings
    from llmc_cli.models.loading import DTYPES, add_lora
    from llmc_cli.optimize.dropout import use_fast_lora_dropout

    dtype = DTYPES[precision]
    lora = LoraSettings(lora_r=lora_r, lora_alpha=2.0 * lora_r, lora_dropout=0.05, target_modules="all-linear")
    model = add_lora(base, lora, gradient_checkpointing=False, quantized=False)
    if device == "cpu":
        use_fast_lora_dropout(model)
    model.train()
    tokens = probe_tokens(config.hidden_size)
    ids = torch.randint(0, PROBE_VOCAB, (1, tokens), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> float:
        sync()
        started = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=precision != "fp32"):
            logits = model(input_ids=ids, use_cache=False).logits
        logits.float().mean().backward()
        sync()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    step()  # first pass: kernel selection, packing, autograd set-up
    best, timed, deadline = float("inf"), 0, time.perf_counter() + seconds
    while timed < 2 or time.perf_counter() < deadline:
        elapsed = step()
        best, timed = min(best, elapsed), timed + 1
        if elapsed > seconds:
            break
    linear = sum(m.base_layer.weight.numel() for m in model.modules() if hasattr(m, "base_layer"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    facts = ModelFacts(0, trainable, linear, 1, config.hidden_size, PROBE_VOCAB, "llama")
    work = StepWork(1, tokens, tokens, tokens / 2, False)
    return step_flops(facts, work) / best


@cache
def layer_speed(hidden: int, precision: str, device: str = "cpu", lora_r: int = 16) -> float:
    """:func:`measure_layer` once per process and shape: a wizard or a study plans many runs of one model."""
    return measure_layer(hidden, precision, device, lora_r)
