"""Bytes a training step keeps alive, measured by running the step on fake tensors.

The model is built from its config on the meta device and its adapter attached exactly as
training attaches it (``add_lora``, the CPU's ``FastDropout``, gradient checkpointing); then
every parameter becomes a ``FakeTensor`` (shapes and dtypes, no data) and one forward and
backward run under a dispatch mode that counts the bytes of every storage alive at each
moment. What autograd saves, the temporaries of each kernel and the gradients in flight are
all seen, for any architecture transformers can build, without reading a weight or touching
real memory. The traced model has one and two decoder layers: a step's activations grow by
the same amount per layer, so the full model's peak is the two-layer peak plus the per-layer
growth for every further layer. A step is also linear in the number of sequences, so two
micro-batch sizes give the slope per sequence (:class:`StepTrace`).

The output head is left out: llmc's loss (``engine/loss.py``) projects only target positions,
in chunks whose buffers :mod:`llmc_cli.optimize.memory` adds by formula.
"""

from __future__ import annotations

import copy
import logging
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from llmc_cli.config.schema import LoraSettings

LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


@dataclass(frozen=True)
class StepTrace:
    """Peak bytes above the model's own tensors during one step, as a function of the batch.

    ``peak(sequences)`` = ``fixed + per_sequence * sequences`` for the whole model.
    """

    seq_len: int
    fixed: float
    per_sequence: float

    def peak(self, sequences: int) -> float:
        return max(0.0, self.fixed + self.per_sequence * sequences)


class _LiveBytes:
    """A dispatch mode counting the bytes of live storages (each storage once, freed when collected)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for item in out if isinstance(out, tuple | list) else (out,):
                    if isinstance(item, torch.Tensor):
                        tracker.add(item)
                return out

        self.mode = Mode()
        self.live = 0
        self.peak = 0
        self._seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        size = storage.nbytes()
        self._seen[storage] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.live -= size

    def reset_peak(self) -> None:
        self.peak = self.live


def layer_count(config: Any) -> int | None:
    for key in LAYER_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def trace_step(
    config: Any,
    lora: LoraSettings,
    *,
    precision: str,
    seq_len: int,
    gradient_checkpointing: bool,
    fast_dropout: bool,
) -> StepTrace:
    """Trace training steps of ``config``'s model with 1 and 2 layers at 1 and 2 sequences.

    Raises:
        Exception: whatever building or running the model on fake tensors raises (an
            architecture whose code needs real values); the caller falls back to a formula.
    """
    layers = layer_count(config)
    if layers is None:
        raise ValueError("the config names no number of layers")
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_log.level
    fake_log.setLevel(logging.CRITICAL)  # a failing op is reported by the caller, once, not logged by torch
    try:
        one = _step_peaks(config, lora, 1, seq_len, precision, gradient_checkpointing, fast_dropout)
        two = _step_peaks(config, lora, 2, seq_len, precision, gradient_checkpointing, fast_dropout)
    finally:
        fake_log.setLevel(level)
    per_layer = {b: two[b] - one[b] for b in (1, 2)}
    full = {b: one[b] + (layers - 1) * per_layer[b] for b in (1, 2)}
    per_sequence = full[2] - full[1]
    return StepTrace(seq_len=seq_len, fixed=full[1] - per_sequence, per_sequence=per_sequence)


def _step_peaks(config, lora, layers, seq_len, precision, checkpointing, fast_dropout) -> dict[int, int]:
    """Peak bytes above the model's tensors in a forward + backward of a ``layers``-layer copy of the
    model, at one and at two sequences."""
    from accelerate import init_empty_weights
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoModelForCausalLM

    from llmc_cli.models.loading import DTYPES, add_lora
    from llmc_cli.optimize.dropout import use_fast_lora_dropout

    small = copy.deepcopy(config)
    for key in LAYER_KEYS:
        if isinstance(getattr(small, key, None), int):
            setattr(small, key, layers)
    if isinstance(getattr(small, "layer_types", None), list):
        small.layer_types = small.layer_types[:layers]
    dtype = DTYPES[precision]
    with init_empty_weights(include_buffers=True):
        base = AutoModelForCausalLM.from_config(small, attn_implementation="sdpa", dtype=dtype)
        base.config.use_cache = False
        model = add_lora(base, lora, checkpointing, quantized=False)
        if fast_dropout:
            use_fast_lora_dropout(model)
    counter = _LiveBytes()
    peaks = {}
    with FakeTensorMode(allow_non_fake_inputs=True), counter.mode:
        _materialise(model)
        model.train()
        head = model.get_output_embeddings()
        captured: list[torch.Tensor] = []

        def skip_head(module, args):  # llmc's loss projects target positions itself (engine/loss.py)
            captured.append(args[0])
            return (args[0][:, -1:, :],)

        handle = head.register_forward_pre_hook(skip_head)
        try:
            for batch in (1, 2):
                counter.reset_peak()
                start = counter.live
                with torch.autocast("cpu", dtype=dtype, enabled=precision != "fp32"):
                    model(input_ids=torch.zeros((batch, seq_len), dtype=torch.long), use_cache=False)
                hidden = captured.pop()
                hidden.backward(torch.ones_like(hidden))
                del hidden
                peaks[batch] = counter.peak - start
        finally:
            handle.remove()
    return peaks


def _materialise(model: torch.nn.Module) -> None:
    """Swap every meta parameter and buffer for a fake tensor of the same shape, dtype and grad flag."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                fake = torch.empty(param.shape, dtype=param.dtype)
                module._parameters[name] = torch.nn.Parameter(fake, requires_grad=param.requires_grad)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype)
