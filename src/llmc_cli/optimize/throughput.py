"""How long a training step takes, before it runs: the step's FLOPs over this machine's measured speed.

FLOPs count what llmc's training does with a frozen base model and a LoRA adapter, per token:

- each decoder linear layer: 2 per weight forward and 2 backward (the gradient with respect to its
  input; a frozen weight gets none), and 2 more forward again with gradient checkpointing;
- attention scores and mixing: 4 x hidden x context per layer forward, twice that backward, where
  context is the tokens before this one in its own example (packed rows attend within an example);
- the output head at target positions only (engine/loss.py): 2 x hidden x vocab forward, 2 backward;
- the adapter: 6 per LoRA parameter.

The machine's speed is measured, not looked up: the FLOP/s of a LoRA training pass through one
decoder layer of the model's width, in the run's dtype (:mod:`llmc_cli.optimize.layerprobe`). A whole
step reaches a fraction of that (the output head and loss, the optimizer, data, Python between
micro-batches): ``STEP_EFFICIENCY``, calibrated against measured steps by ``benchmarks/memory.py``,
which prints predicted against measured seconds per step. (A bare matmul probe, used before, moved
3x between runs and between CPUs while training steps did not.)

``measure_matmul`` stays as the machine's peak, which ``llmc analyze`` sets a run's model FLOP/s
against.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

from llmc_cli.optimize.memory import ModelFacts

# Step FLOPs / (measured seconds a step x the layer probe's FLOP/s), by device and precision: 10-step runs
# of the mini model and SmolLM2-135M on a 2-core Xeon with AMX (benchmarks/memory.py, 2026-12-03; bf16
# 0.66-1.02 over twelve cases, median 0.88; fp32 0.83 and 1.05). Not yet checked on a CPU without AMX.
# Where a pair has no figure, no time is predicted.
STEP_EFFICIENCY = {("cpu", "bf16"): 0.85, ("cpu", "fp32"): 0.9}
PROBE_SECONDS = 0.5
PROBE_ROWS = 1024  # tokens of the probe's matmul: a packed row's worth
PEAK_PROBE_FROM_S = 60.0  # a run that trained this long records the machine's peak (0.5 s: under 1 %)


@dataclass(frozen=True)
class StepWork:
    """What one optimizer step processes: rows, their tokens and target tokens, and attention context."""

    rows: int
    tokens: float
    target_tokens: float
    context: float  # mean tokens attended to, per token (half the mean example length, causal)
    gradient_checkpointing: bool


def step_flops(facts: ModelFacts, work: StepWork) -> float:
    """FLOPs of one optimizer step (forward and backward of every micro-batch)."""
    linear = (6 if work.gradient_checkpointing else 4) * facts.linear_params * work.tokens
    attention_passes = 4 if work.gradient_checkpointing else 3  # forward (again) + backward (2x)
    attention = attention_passes * 4 * facts.layers * facts.hidden_size * work.context * work.tokens
    head = 4 * facts.hidden_size * facts.vocab_size * work.target_tokens
    adapter = 6 * facts.trainable_params * work.tokens
    return linear + attention + head + adapter


def measure_matmul(hidden: int, dtype: str, device: str = "cpu", seconds: float = PROBE_SECONDS) -> float:
    """Best FLOP/s of a (PROBE_ROWS x hidden) @ (hidden x hidden) product in ``dtype`` ("bf16", "fp16",
    "fp32") on ``device``, over about ``seconds``; one product taking longer than that ends the probe
    (an emulated dtype is slow, and its one figure says so)."""
    import torch

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    width = max(64, hidden)
    a = torch.randn(PROBE_ROWS, width, dtype=torch_dtype, device=device)
    b = torch.randn(width, width, dtype=torch_dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    flops, best = 2.0 * PROBE_ROWS * width * width, 0.0
    a @ b  # first call: kernel selection and packing
    deadline = time.perf_counter() + seconds
    while True:
        sync()
        started = time.perf_counter()
        a @ b
        sync()
        best = max(best, flops / max(time.perf_counter() - started, 1e-9))
        if time.perf_counter() >= deadline:
            return best


@cache
def machine_speed(hidden: int, dtype: str, device: str = "cpu") -> float:
    """:func:`measure_matmul` once per process and shape."""
    return measure_matmul(hidden, dtype, device)


def run_peak(model, precision: str, device: str, train_time_s: float) -> float | None:
    """The machine's matmul peak for ``model``'s linear layers in ``precision``, measured after a run
    that trained at least ``PEAK_PROBE_FROM_S`` (``llmc analyze`` sets the model FLOP/s against it);
    None for a shorter run or a model without a hidden size."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if train_time_s < PEAK_PROBE_FROM_S or not isinstance(hidden, int):
        return None
    return machine_speed(hidden, precision, device)


@dataclass(frozen=True)
class StepTime:
    per_step_s: float
    total_s: float | None
    step_flops: float
    probe_flops_per_s: float
    efficiency: float
    basis: str  # where the token counts come from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict(
    facts: ModelFacts,
    work: StepWork,
    probe_flops_per_s: float,
    efficiency: float,
    total_steps: int | None,
    basis: str,
) -> StepTime:
    """Seconds per optimizer step (and for the run when its steps are known) at ``efficiency``
    (a :data:`STEP_EFFICIENCY` figure) of the layer probe's measured speed."""
    flops = step_flops(facts, work)
    per_step = flops / (probe_flops_per_s * efficiency)
    total = per_step * total_steps if total_steps else None
    return StepTime(per_step, total, flops, probe_flops_per_s, efficiency, basis)
