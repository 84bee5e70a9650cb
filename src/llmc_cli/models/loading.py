"""Load the tokenizer and the frozen base model, and wrap it with a peft LoRA adapter."""

from __future__ import annotations

from typing import Any

import torch

from llmc_cli.config.schema import LoraSettings
from llmc_cli.errors import ModelError
from llmc_cli.models.source import ModelSource

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BILLION = 1e9


_TOKENIZERS: dict[tuple, Any] = {}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")  # not part of a tokenizer's identity


def load_tokenizer(source: ModelSource):
    """The model's tokenizer, with a pad token (needed to batch; it never carries loss).

    Loaded once per process for a folder whose files have not changed: a plan profiles the
    data with it and the dry run, the session and every trial of a study use it again
    (the Llama-2 tokenizer.json takes about 0.5 s to parse). llmc never changes a tokenizer
    after this function has set its pad token."""
    key = _tokenizer_key(source)
    if key in _TOKENIZERS:
        return _TOKENIZERS[key]
    tokenizer = _load_tokenizer(source)
    _TOKENIZERS.clear()  # one at a time: a study or a run uses one model
    _TOKENIZERS[key] = tokenizer
    return tokenizer


def _tokenizer_key(source: ModelSource) -> tuple:
    if not source.local:
        return (source.location,)
    from pathlib import Path

    files = sorted(p for p in Path(source.location).glob("*") if p.is_file() and p.suffix not in WEIGHT_SUFFIXES)
    return (source.location, *((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files))


def _load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location)
    except Exception as exc:
        raise ModelError(
            f"Cannot load a tokenizer from {source.location}: {exc}",
            hint="The model folder needs tokenizer files (tokenizer.json or tokenizer.model); "
            "save them with tokenizer.save_pretrained(folder).",
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise ModelError(f"The tokenizer of {source.location} has no pad, eos or unk token.", hint="Add one.")
    return tokenizer


def load_base_model(source: ModelSource, precision: str, quantize: str):
    """Load the frozen base weights in the compute dtype (or 4/8-bit for QLoRA)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": DTYPES[precision], "attn_implementation": "sdpa"}
    if quantize != "none":
        kwargs["quantization_config"] = _quantization_config(quantize, precision)
    try:
        model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        hint = "Check that the folder holds the weights (model.safetensors) and config.json."
        if quantize != "none":
            hint = "4/8-bit loading needs bitsandbytes and, for most builds, a CUDA GPU; try --quantize none."
        raise ModelError(f"Cannot load the model from {source.location}: {exc}", hint=hint) from None
    model.config.use_cache = False
    return model


def _quantization_config(quantize: str, precision: str):
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=DTYPES[precision],
    )


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def add_lora(model, settings: LoraSettings, gradient_checkpointing: bool, quantized: bool):
    """Freeze the base, attach LoRA, and turn on gradient checkpointing if asked."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    targets = settings.target_modules if isinstance(settings.target_modules, str) else list(settings.target_modules)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=targets,
        bias="none",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        names = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ModelError(
            f"LoRA target modules {targets} do not match this model: {exc}",
            hint=f"Use --target-modules all-linear, or a list from this model's linear layers: {', '.join(names)}.",
        ) from None
