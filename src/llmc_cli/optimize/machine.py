"""A full probe of the machine for ``llmc doctor``: CPU, memory, GPUs, disk and libraries.

Everything is read from the operating system, NVML (nvidia-ml-py) and torch; nothing loads
a model. A probe that cannot run (no NVIDIA driver, no bitsandbytes) is reported with its
reason instead of failing. :func:`advise` turns the probe into what it implies for training.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from llmc_cli.config.families import FAMILIES
from llmc_cli.durable import free_bytes
from llmc_cli.optimize.hardware import CPU_BF16_FLAGS, Hardware, choose_precision, pick_family

FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    memory_total_bytes: int
    memory_free_bytes: int | None
    compute_capability: str
    bf16: bool


@dataclass(frozen=True)
class Machine:
    """What the probe found; ``notes`` say what could not be probed and why."""

    cpu_model: str
    cpu_cores: int  # usable by this process (affinity)
    cpu_logical: int
    cpu_flags: dict[str, bool]
    ram_total_bytes: int
    ram_available_bytes: int
    gpus: list[GPU]
    disk_free_bytes: dict[str, int | None]  # path -> free bytes at the nearest existing folder
    python: str
    torch: str
    cuda: str | None
    bitsandbytes: str | None
    notes: list[str] = field(default_factory=list)

    def hardware(self) -> Hardware:
        """The summary the trainer uses (the first GPU, if any)."""
        cpu_bf16 = any(self.cpu_flags.get(flag, False) for flag in CPU_BF16_FLAGS)
        ram_gb = self.ram_total_bytes / 2**30
        if self.gpus:
            gpu = self.gpus[0]
            return Hardware(
                "cuda", gpu.name, gpu.memory_total_bytes / 2**30, gpu.bf16, cpu_bf16, self.cpu_cores, ram_gb
            )
        return Hardware("cpu", "CPU", 0.0, False, cpu_bf16, self.cpu_cores, ram_gb)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """The CPU's model name and flags (empty where the file is missing, e.g. macOS)."""
    try:
        text = path.read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model or platform.machine(), flags


def probe(paths: list[Path], cpuinfo: Path = Path("/proc/cpuinfo")) -> Machine:
    """Probe this machine; ``paths`` are folders whose free disk space is reported."""
    import torch

    notes: list[str] = []
    model, flags = read_cpuinfo(cpuinfo)
    from llmc_cli.optimize.budget import available_ram

    memory = psutil.virtual_memory()
    available, rule = available_ram()
    if rule != "available RAM":
        notes.append(f"Available RAM is the {rule} ({available / 2**30:.1f} GiB).")
    gpus = _gpus(notes)
    return Machine(
        cpu_model=model,
        cpu_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        cpu_logical=os.cpu_count() or 1,
        cpu_flags={flag: flag in flags for flag in FLAGS_OF_INTEREST if flags},
        ram_total_bytes=memory.total,
        ram_available_bytes=available,
        gpus=gpus,
        disk_free_bytes={str(path): free_bytes(Path(path).expanduser()) for path in paths},
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        bitsandbytes=_bitsandbytes(notes, bool(gpus)),
        notes=notes,
    )


def _gpus(notes: list[str]) -> list[GPU]:
    import torch

    if not torch.cuda.is_available():
        reason = "torch is a CPU-only build" if torch.version.cuda is None else "torch finds no CUDA device"
        notes.append(f"No GPU: {reason}{_nvml_reason()}.")
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        free = None
        try:
            free, _ = torch.cuda.mem_get_info(index)
        except RuntimeError:
            pass
        found.append(
            GPU(
                index=index,
                name=props.name,
                memory_total_bytes=props.total_memory,
                memory_free_bytes=free,
                compute_capability=f"{props.major}.{props.minor}",
                bf16=props.major >= 8,
            )
        )
    return found


def _nvml_reason() -> str:
    """Why NVML sees no GPU either (no driver, no device), for the note."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
        return f"; the NVIDIA driver lists {count} device(s)" if count else "; the NVIDIA driver lists no device"
    except Exception as exc:  # noqa: BLE001 - any NVML failure is a reason to report, not an error
        return f"; NVML: {exc}" if str(exc) else f"; NVML: {type(exc).__name__}"


def _bitsandbytes(notes: list[str], have_gpu: bool) -> str | None:
    try:
        from importlib.metadata import version

        found = version("bitsandbytes")
    except Exception:  # noqa: BLE001 - not installed
        notes.append("bitsandbytes is not installed: no 4/8-bit quantisation (QLoRA).")
        return None
    if not have_gpu:
        notes.append("bitsandbytes is installed, but QLoRA in llmc needs a CUDA GPU.")
    return found


@dataclass(frozen=True)
class Advice:
    """One thing the probe implies: ``topic``, the ``answer``, and ``why``."""

    topic: str
    answer: str
    why: str


def advise(machine: Machine) -> list[Advice]:
    """What the machine implies for training with llmc."""
    hardware = machine.hardware()
    precision, precision_why = choose_precision("auto", True, hardware)
    advice = [Advice("precision", precision, precision_why)]
    if machine.gpus and machine.bitsandbytes:
        advice.append(
            Advice("QLoRA (--quantize 4bit)", "possible", f"CUDA GPU and bitsandbytes {machine.bitsandbytes}")
        )
    else:
        why = "needs a CUDA GPU" if not machine.gpus else "needs bitsandbytes (pip install bitsandbytes)"
        advice.append(Advice("QLoRA (--quantize 4bit)", "not possible here", why))
    family, family_why = pick_family(hardware)
    advice.append(Advice("--model auto", f"{family} ({FAMILIES[family].hub_id})", family_why))
    advice += family_advice(machine, precision)
    for (path, free), use in zip(machine.disk_free_bytes.items(), DISK_USES, strict=False):
        answer = f"{free / 2**30:.1f} GiB free" if free is not None else "unknown"
        advice.append(Advice(f"disk at {path}", answer, use))
    return advice


@dataclass(frozen=True)
class FamilyReport:
    """Each family's presets against this machine's memory budget (``llmc doctor``'s table)."""

    precision: str
    budget_bytes: int
    budget_rule: str
    fits: list[Any]  # FamilyFit, smallest family first, fastest preset first
    fits_4bit: list[Any]  # the same with 4-bit weights (QLoRA), where it is possible here

    def largest(self) -> Any | None:
        """The largest family, then the most thorough preset, that fits (the fits' order)."""
        return next((fit for fit in reversed(self.fits) if fit.fits), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def family_report(machine: Machine, precision: str) -> FamilyReport:
    from llmc_cli.optimize.budget import memory_budget
    from llmc_cli.optimize.families import family_fits

    hardware = machine.hardware()
    if machine.gpus:
        gpu = machine.gpus[0]
        free = gpu.memory_free_bytes if gpu.memory_free_bytes is not None else gpu.memory_total_bytes
    else:
        free = machine.ram_available_bytes
    budget, rule = memory_budget(None, hardware, free, precision)
    fits = family_fits(hardware.device, precision, budget, rule)
    qlora = bool(machine.gpus and machine.bitsandbytes)
    fits_4bit = family_fits(hardware.device, precision, budget, rule, quantize="4bit") if qlora else []
    return FamilyReport(precision, budget, rule, fits, fits_4bit)


def family_advice(machine: Machine, precision: str) -> list[Advice]:
    report = family_report(machine, precision)
    best = report.largest()
    if best is not None:
        answer = f"{best.family} with --preset {best.preset} (micro-batch {best.micro_batch})"
        why = (
            f"the largest model, then the most thorough preset, whose estimated peak fits "
            f"{_gib(report.budget_bytes)} ({report.budget_rule})"
        )
    else:
        answer = "none of the families"
        why = f"even one sequence needs more than {_gib(report.budget_bytes)}; try a smaller local model"
    return [Advice("largest family and preset that fit", answer, why)]


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"


DISK_USES = ("runs: checkpoints and the final adapter", "prepared data: about 3 bytes per token")
