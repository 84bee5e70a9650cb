"""How much memory a run may plan for: free RAM (within this process's cgroup limit) or free GPU memory."""

from __future__ import annotations

from pathlib import Path

import psutil

from llmc_cli.optimize.hardware import Hardware
from llmc_cli.optimize.memory import CPU_FRAMEWORK_BYTES

GiB = 2**30
# The rest covers the estimate's error (-6.8 % to +3.0 % in benchmarks/memory.py, CPU fp32).
CPU_SHARE, GPU_SHARE = 0.90, 0.90
# Half precision on CPU varies more: -12.6 % to +10.4 % (bf16, benchmarks/memory.py), and under a
# cgroup cap the largest micro-batch that completes moves between runs of the same case (the mini
# model, 16 rows a step, 10 steps: 7 or 8 under 2000 MB, 8 or 9 under 2300, 10 or 11 under 2600;
# the RSS still grows over the first steps). With 90 % the fit chose 9 under 2300 MB, where 9 was
# killed in another run; with 87 % it chose 7 under 2000 MB and was killed in step 5. With 85 %:
# 6, 8 and 10, all completed (benchmarks/README.md).
CPU_HALF_SHARE = 0.85


def memory_budget(
    setting_gib: float | None, hardware: Hardware, free_bytes: int | None = None, precision: str = "fp32"
) -> tuple[int, str]:
    """Bytes a run may plan for, and the rule that gave them.

    ``free_bytes`` is free memory already probed (``llmc doctor``'s probe, which also applies the
    cgroup limit); without it this process's device is measured now. ``precision`` is the run's:
    on CPU, half precision plans with a wider margin.
    """
    if setting_gib is not None:
        return int(setting_gib * GiB), "memory_budget"
    if hardware.device == "cuda":
        if free_bytes is None:
            import torch

            free_bytes, _ = torch.cuda.mem_get_info()
        return int(free_bytes * GPU_SHARE), f"{GPU_SHARE:.0%} of free GPU memory"
    if free_bytes is not None:
        available, rule = free_bytes, "available RAM"
    else:
        available, rule = available_ram()
    share = CPU_SHARE if precision == "fp32" else CPU_HALF_SHARE
    # The libraries the estimate counts are loaded already (planning imported them): credit them.
    return int(available * share) + CPU_FRAMEWORK_BYTES, f"{share:.0%} of {rule}, libraries loaded"


def available_ram() -> tuple[int, str]:
    """Bytes of RAM this process can still use (the cgroup's limit where it is lower), and which rule."""
    available, rule = psutil.virtual_memory().available, "available RAM"
    limit = cgroup_memory_left()
    if limit is not None and limit < available:
        available, rule = limit, "memory left under this cgroup's limit"
    return available, rule


def cgroup_memory_left(proc: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes left under the memory limit of this process's cgroup (v2 or v1); None without a limit."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            folder, limit_file, usage_file = root / path.lstrip("/"), "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # v1
            folder, limit_file, usage_file = (
                root / "memory" / path.lstrip("/"),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        else:
            continue
        try:
            limit_text = (folder / limit_file).read_text().strip()
            usage = int((folder / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 2**60:
            continue
        return max(0, int(limit_text) - usage)
    return None
