"""The system sampler reports this process and the machine, and emits on its own thread."""

import time

from llmc_cli.events import SystemSampled
from llmc_cli.monitor.system import SystemSampler


class Bus:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)


def test_samples_describe_this_process_and_stop_cleanly():
    bus = Bus()
    ballast = bytearray(64 * 2**20)  # 64 MB more resident memory than before
    with SystemSampler(bus, interval_s=0.05) as sampler:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            sum(range(10_000))  # keep a core busy
        sample = sampler.sample()
    count = len(bus.events)
    time.sleep(0.2)
    assert len(bus.events) == count >= 3  # sampled while running, silent after stop
    assert all(isinstance(e, SystemSampled) for e in bus.events)
    assert sample.rss_mb > 64 and 0 < sample.ram_percent < 100
    assert max(e.cpu_percent for e in bus.events) > 20
    assert isinstance(sample.gpus, list)  # empty on machines without an NVIDIA GPU
    del ballast


def test_torch_cuda_memory_is_read_without_initialising_cuda():
    import torch

    from llmc_cli.monitor.system import torch_cuda_allocated_mb

    allocated = torch_cuda_allocated_mb()
    if not torch.cuda.is_available():
        assert allocated == [] and not torch.cuda.is_initialized()
    else:
        assert len(allocated) in (0, torch.cuda.device_count())
