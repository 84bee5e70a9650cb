"""What this machine offers, and the choices that follow from it (precision, model size).

Precision on CPUs is chosen from the instruction set, not assumed: with AVX512-BF16 or
AMX, bf16 matrix math is several times faster than fp32; without them (AVX2-only CPUs)
PyTorch emulates bf16 and it is many times slower, so fp32 is chosen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Hardware:
    """A snapshot of the compute available to one process."""

    device: str  # "cuda", "mps" or "cpu"
    device_name: str
    accelerator_memory_gb: float
    accelerator_bf16: bool
    cpu_bf16: bool
    cpu_cores: int
    ram_gb: float


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU advertises bf16 matrix instructions (x86 AVX512-BF16 or AMX)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return any(flag in flags.split() for flag in CPU_BF16_FLAGS)


def detect() -> Hardware:
    """Probe the machine (imports torch)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ram = psutil.virtual_memory().total / 2**30
    cpu_bf16 = cpu_has_native_bf16()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Hardware(
            "cuda", props.name, props.total_memory / 2**30, torch.cuda.is_bf16_supported(), cpu_bf16, cores, ram
        )
    return Hardware("cpu", "CPU", 0.0, False, cpu_bf16, cores, ram)


def choose_precision(requested: str, mixed_precision: bool, hardware: Hardware) -> tuple[str, str]:
    """The compute precision to use and why.

    Returns:
        ``("bf16" | "fp16" | "fp32", reason)``.
    """
    if not mixed_precision:
        return "fp32", "ENABLE_MIXED_PRECISION is false"
    if requested != "auto":
        return requested, "requested"
    if hardware.device == "cuda":
        if hardware.accelerator_bf16:
            return "bf16", f"{hardware.device_name} supports bf16"
        return "fp16", f"{hardware.device_name} has no bf16; fp16 with loss scaling"
    if hardware.cpu_bf16:
        return "bf16", "CPU has native bf16 instructions (AVX512-BF16/AMX)"
    return "fp32", "CPU lacks native bf16 instructions; bf16 would be emulated and slower"


def pick_family(hardware: Hardware) -> tuple[str, str]:
    """The model family ``--model auto`` uses on this hardware, and why."""
    if hardware.device == "cuda":
        memory = hardware.accelerator_memory_gb
        if memory >= 40:
            return "mistral", f"{memory:.0f} GiB GPU fits Mistral-7B LoRA"
        if memory >= 16:
            return "phi", f"{memory:.0f} GiB GPU fits Phi (3.8B) LoRA"
        if memory >= 8:
            return "qwen", f"{memory:.0f} GiB GPU fits Qwen 1.5B LoRA"
    return "tinyllama", "no large GPU: TinyLlama 1.1B is the size that trains here"
