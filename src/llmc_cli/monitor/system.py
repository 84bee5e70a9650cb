"""A background sampler of system metrics: CPU and memory (psutil), GPUs (pynvml, torch.cuda).

It runs in its own daemon thread and emits ``SystemSampled`` events every ``interval_s``
seconds; the training loop never waits for it. GPU fields (NVML utilisation and memory per
device, and what PyTorch's CUDA allocator holds) are empty lists where there is no NVIDIA
GPU, driver or CUDA use, and the displays show n/a.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import psutil

from llmc_cli.events import EventBus, SystemSampled


def _nvml_handles() -> list[Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no library, no driver, no device: all mean "no GPU metrics"
        return []


def gpu_metrics(handles: list[Any]) -> list[dict[str, float]]:
    """Utilisation and memory of each NVIDIA GPU (empty without one)."""
    if not handles:
        return []
    import pynvml

    out = []
    for handle in handles:
        try:
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        except pynvml.NVMLError:
            continue
        out.append(
            {
                "util_percent": float(util.gpu),
                "memory_used_mb": memory.used / 2**20,
                "memory_total_mb": memory.total / 2**20,
            }
        )
    return out


def torch_cuda_allocated_mb() -> list[float]:
    """Memory held by PyTorch's CUDA allocator per device; empty until this process has used CUDA."""
    torch = sys.modules.get("torch")  # never import torch (or initialise CUDA) just to sample
    if torch is None or not torch.cuda.is_initialized():
        return []
    return [torch.cuda.memory_allocated(i) / 2**20 for i in range(torch.cuda.device_count())]


class SystemSampler:
    """Emits a ``SystemSampled`` event every ``interval_s`` seconds while running."""

    def __init__(self, bus: EventBus, interval_s: float = 2.0) -> None:
        self.bus = bus
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()
        self._handles: list[Any] = []

    def sample(self) -> SystemSampled:
        with self._process.oneshot():
            cpu = self._process.cpu_percent(None)
            rss = self._process.memory_info().rss / 2**20
        return SystemSampled(
            cpu_percent=cpu,
            rss_mb=rss,
            ram_percent=psutil.virtual_memory().percent,
            gpus=gpu_metrics(self._handles),
            torch_allocated_mb=torch_cuda_allocated_mb(),
        )

    def start(self) -> SystemSampler:
        self._handles = _nvml_handles()
        self._process.cpu_percent(None)  # the first call only sets the baseline
        self._thread = threading.Thread(target=self._run, name="llmc-system", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SystemSampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.bus.emit(self.sample())
