"""How much memory a training run takes, before it runs: a breakdown and a total, without weights.

The parts, for one process:

- **weights**: the frozen base model in the compute dtype (4-/8-bit linear layers with QLoRA).
- **adapter**: each LoRA parameter's fp32 value, gradient and AdamW moments (16 bytes), and the
  copies llmc keeps: the best adapter, the session's starting state for a rollback (adapter and
  moments) and the update-ratio copy (20 bytes more).
- **activations**: what one training step keeps alive, traced on fake tensors for this exact
  model, adapter and micro-batch (:mod:`llmc_cli.models.trace`), times an allocator factor.
- **loss**: llmc's chunked output projection (a logits and a log-probability chunk) and the
  hidden-state copies it makes, by formula from ``engine/loss.py``.
- **overhead**: what the framework holds besides tensors (libraries, tokenizer, allocator), and
  on CPU in half precision oneDNN's cache of compiled kernels.

Measured peaks differ from live tensor bytes by how the allocator reuses memory, so the factor
and overheads below are calibrated against measured peaks (``benchmarks/memory.py`` prints the
comparison): on CPU the process's peak RSS above an idle process that imported torch; on CUDA
``torch.cuda.max_memory_reserved``. An architecture the trace cannot run gets an estimate from
the config's sizes, marked approximate with the reason.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmc_cli.config.schema import LoraSettings

MiB = 2**20
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
QUANTIZED_BYTES = {"4bit": 0.5 + 0.5 / 64 * 2, "8bit": 1.0 + 4 / 4096}  # + block scales (nf4 double-quant: ~0.52)
ADAPTER_TRAINING_BYTES = 16  # fp32 value, gradient, AdamW exp_avg and exp_avg_sq
ADAPTER_COPIES_BYTES = 20  # best adapter (4), rollback origin: adapter + moments (12), update-ratio copy (4)
LOSS_CHUNK_BYTES = 64 * MiB  # engine/loss.py CHUNK_BYTES: fp32 logits per chunk

# Calibrated on a 2-core x86 CPU in fp32 (glibc, llmc's allocator settings; benchmarks/memory.py):
# peak RSS grows faster than live tensor bytes, because freed activations are kept for reuse but
# do not always fit the next request. Without checkpointing the ratio of the RSS slope per sequence
# to the traced one was 1.37-1.47 (a 4-layer and a 30-layer model); with checkpointing every
# checkpointed layer's forward leaves more behind, so the ratio grows with depth: 2.6-2.7 at 4
# layers, 8.0 at 30 (fitted: 1.85 + 0.205 per layer).
CPU_FRAMEWORK_BYTES = 190 * MiB  # transformers, peft, accelerate, tokenizers imported over torch
CPU_ACTIVATION_FACTOR = 1.45
CPU_CHECKPOINTED_FACTOR = (1.85, 0.205)  # + per layer
# Half precision on CPU (bf16 on a 2-core AMD EPYC with avx512_bf16, optimize/attention.py padding
# examples to 64 tokens; benchmarks/memory.py): the same activation factor held without checkpointing
# (1.44-1.50), plus oneDNN's cache of bf16 kernels, which fp32 (MKL) does not keep: 150-160 MB, the
# drop in peak RSS with ONEDNN_PRIMITIVE_CACHE_CAPACITY=0. With checkpointing the ratio grew less with
# depth than in fp32: 2.0-2.3 at 4 layers, 4.2 at 30 (fitted: 1.86 + 0.077 per layer).
CPU_HALF_KERNEL_BYTES = 160 * MiB
CPU_HALF_CHECKPOINTED_FACTOR = (1.86, 0.077)  # + per layer
# A step of several micro-batches (gradient accumulation, or a loader batch cut into micro-batches,
# the last one smaller) left more behind on CPU: 16 rows a step of the mini model in micro-batches
# of 7 (7, 7, 2) and of 4 at length 1024 peaked 11-20 % of the activations above the micro-batch
# taking the whole step (fp32 and bf16); SmolLM2 in micro-batches of 3 (12 rows a step, bf16), 3 %
# below it. 1.1 keeps all three within 11 % (benchmarks/memory.py).
CPU_ACCUMULATING_FACTOR = 1.1
# CUDA: the caching allocator rounds and keeps blocks; PyTorch's guidance is ~10-20 % above allocated.
CUDA_ACTIVATION_FACTOR = 1.15
CUDA_FRAMEWORK_BYTES = 64 * MiB  # cuBLAS workspaces and kernels' scratch in the caching allocator


@dataclass(frozen=True)
class ModelFacts:
    """What the estimate needs of a model, read from its config on the meta device."""

    total_params: int
    trainable_params: int
    linear_params: int  # in the decoder's nn.Linear layers (what 4/8-bit quantisation shrinks)
    layers: int
    hidden_size: int
    vocab_size: int
    model_type: str


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one training process, in bytes, by part; ``approximate`` says the trace was not used."""

    device: str
    micro_batch: int
    seq_len: int
    gradient_checkpointing: bool
    parts: dict[str, int]
    total_bytes: int
    approximate: bool = False
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MemoryModel:
    """Estimates for one model, adapter, precision and sequence length at any micro-batch.

    Built once (it traces the model, a few seconds); :meth:`estimate` is then arithmetic, so a
    batch-size search asks it as often as it likes.
    """

    def __init__(
        self,
        config: Any,
        facts: ModelFacts,
        lora: LoraSettings,
        *,
        device: str,
        precision: str,
        quantize: str,
        seq_len: int,
        traces: dict[bool, Any] | None = None,
    ) -> None:
        self.config, self.facts, self.lora = config, facts, lora
        self.device, self.precision, self.quantize, self.seq_len = device, precision, quantize, seq_len
        self._traces: dict[bool, Any] = dict(traces or {})  # by checkpointing; traced when missing
        self.approximate_reason = ""

    # ------------------------------------------------------------------ parts
    def weights(self) -> int:
        f = self.facts
        dtype = DTYPE_BYTES[self.precision]
        if self.quantize in QUANTIZED_BYTES:
            rest = f.total_params - f.linear_params
            return int(f.linear_params * QUANTIZED_BYTES[self.quantize] + rest * dtype)
        return f.total_params * dtype

    def adapter(self) -> int:
        return self.facts.trainable_params * (ADAPTER_TRAINING_BYTES + ADAPTER_COPIES_BYTES)

    def loss(self, micro_batch: int) -> int:
        """The fused loss's chunk buffers and its two hidden-state copies (targets x hidden, fp32)."""
        f = self.facts
        tokens = micro_batch * self.seq_len
        rows = min(tokens, max(16, LOSS_CHUNK_BYTES // (4 * f.vocab_size)))
        per_row = f.vocab_size * (DTYPE_BYTES[self.precision] + 4 + (2 if self.precision != "fp32" else 0))
        return rows * per_row + 2 * tokens * f.hidden_size * 4

    def activations(self, micro_batch: int, checkpointing: bool, accumulating: bool = False) -> tuple[int, bool]:
        """Bytes of one step's activations (allocator factor included) and whether the trace was used.

        ``accumulating``: the step runs more than one micro-batch."""
        trace = self._trace(checkpointing)
        if trace is not None:
            live = trace.peak(micro_batch)
        else:
            live = self._formula(micro_batch, checkpointing)
        factor = self._factor(checkpointing)
        if accumulating and self.device == "cpu":
            factor *= CPU_ACCUMULATING_FACTOR
        return int(live * factor), trace is not None

    def overhead(self) -> int:
        if self.device == "cuda":
            return CUDA_FRAMEWORK_BYTES
        return CPU_FRAMEWORK_BYTES + (CPU_HALF_KERNEL_BYTES if self.precision != "fp32" else 0)

    # --------------------------------------------------------------- estimate
    def estimate(self, micro_batch: int, checkpointing: bool, rows_per_step: int | None = None) -> MemoryEstimate:
        """The peak of a step of ``rows_per_step`` rows (default: one micro-batch) in micro-batches."""
        accumulating = rows_per_step is not None and rows_per_step > micro_batch
        activations, traced = self.activations(micro_batch, checkpointing, accumulating)
        parts = {
            "weights": self.weights(),
            "adapter": self.adapter(),
            "activations": activations,
            "loss": self.loss(micro_batch),
            "overhead": self.overhead(),
        }
        notes = []
        if self.device == "cpu":
            notes.append("CPU: peak RSS above an idle Python process that has imported torch")
        else:
            notes.append("CUDA: torch.cuda.max_memory_reserved; the CUDA context (~0.5 GiB) comes on top")
        if self.quantize != "none":
            notes.append(f"{self.quantize} weights by formula (bitsandbytes kernels are not traced)")
        return MemoryEstimate(
            device=self.device,
            micro_batch=micro_batch,
            seq_len=self.seq_len,
            gradient_checkpointing=checkpointing,
            parts=parts,
            total_bytes=sum(parts.values()),
            approximate=not traced,
            reason="" if traced else self.approximate_reason,
            notes=notes,
        )

    # ---------------------------------------------------------------- helpers
    def _factor(self, checkpointing: bool) -> float:
        if self.device == "cuda":
            return CUDA_ACTIVATION_FACTOR
        if checkpointing:
            base, per_layer = CPU_CHECKPOINTED_FACTOR if self.precision == "fp32" else CPU_HALF_CHECKPOINTED_FACTOR
            return base + per_layer * self.facts.layers
        return CPU_ACTIVATION_FACTOR

    def _trace(self, checkpointing: bool):
        if checkpointing in self._traces:
            return self._traces[checkpointing]
        from llmc_cli.models.trace import StepTrace, trace_step

        settings = dict(
            precision=self.precision,
            seq_len=self.seq_len,
            gradient_checkpointing=checkpointing,
            fast_dropout=self.device == "cpu",
        )
        cached = _trace_cache(self.config, self.lora, settings)
        try:
            trace = StepTrace(**json.loads(cached.read_text())) if cached and cached.is_file() else None
        except (OSError, ValueError, TypeError):
            trace = None
        if trace is not None:
            self._traces[checkpointing] = trace
            return trace
        try:
            trace = trace_step(self.config, self.lora, **settings)
            if cached is not None:
                _remember(cached, trace)
        except Exception as exc:  # noqa: BLE001 - any failure of the trace means: use the formula, say why
            trace = None
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            self.approximate_reason = (
                f"the '{self.facts.model_type}' model could not be traced on fake tensors "
                f"({type(exc).__name__}{': ' + first if first else ''}); activations estimated from its sizes"
            )
        self._traces[checkpointing] = trace
        return trace

    def _formula(self, micro_batch: int, checkpointing: bool) -> float:
        """Activations from the config's sizes alone: per token and layer, ~36 hidden-size values saved
        by a Llama-style layer with LoRA on all linear layers (fitted to traces of Llama models); with
        checkpointing, each layer's input plus one layer's worth."""
        f = self.facts
        per_layer = 36 * f.hidden_size * DTYPE_BYTES[self.precision] * micro_batch * self.seq_len
        if checkpointing:
            return f.layers * f.hidden_size * 4 * micro_batch * self.seq_len + per_layer
        return f.layers * per_layer


TRACE_VERSION = 1  # bump when what a trace measures changes


def _trace_cache(config: Any, lora: LoraSettings, settings: dict[str, Any]) -> Path | None:
    """Where a trace of this model, adapter and setting is remembered (a trace takes seconds; a run
    plans with the same ones again and again)."""
    try:
        import torch
        import transformers

        from llmc_cli.paths import cache_dir

        identity = json.dumps(
            [config.to_dict(), lora.model_dump(mode="json"), settings, torch.__version__,
             transformers.__version__, TRACE_VERSION],
            sort_keys=True, default=str,
        )  # fmt: skip
    except Exception:  # noqa: BLE001 - a config that cannot be serialised is traced every time
        return None
    return cache_dir() / "memory" / f"{hashlib.sha256(identity.encode()).hexdigest()[:24]}.json"


def _remember(path: Path, trace: Any) -> None:
    try:
        from llmc_cli.durable import write_json

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, asdict(trace))
    except OSError:
        pass  # only a cache: the next plan traces again


def model_facts(config: Any, lora: LoraSettings) -> ModelFacts:
    """Count parameters on the meta device (no weights read) and read the sizes the estimate needs."""
    from llmc_cli.models.footprint import footprint
    from llmc_cli.models.trace import layer_count

    counted = footprint(config, lora)
    return ModelFacts(
        total_params=counted.total_params,
        trainable_params=counted.trainable_params,
        linear_params=counted.linear_params,
        layers=layer_count(config) or 1,
        hidden_size=int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0),
        vocab_size=int(getattr(config, "vocab_size", 0) or 0),
        model_type=str(getattr(config, "model_type", "unknown")),
    )
