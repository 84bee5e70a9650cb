"""Fitting the micro-batch to a budget: effective batch kept, checkpointing only when needed."""

from __future__ import annotations

from dataclasses import dataclass

from llmc_cli.optimize.batch import fit_batch
from llmc_cli.optimize.budget import CPU_FRAMEWORK_BYTES, cgroup_memory_left, memory_budget
from llmc_cli.optimize.hardware import Hardware
from llmc_cli.optimize.memory import MemoryEstimate

MB = 2**20


@dataclass
class LinearMemory:
    """A stand-in estimate: 100 MB fixed, 50 MB a sequence (20 MB with checkpointing)."""

    device: str = "cpu"
    quantize: str = "none"

    def estimate(self, micro: int, checkpointing: bool, rows_per_step: int | None = None) -> MemoryEstimate:
        total = (100 + (20 if checkpointing else 50) * micro) * MB
        return MemoryEstimate("cpu", micro, 512, checkpointing, {"all": total}, total)


def fit(memory, budget_mb, effective=16, ceiling=16, checkpointing="auto"):
    return fit_batch(memory, budget_mb * MB, "test", effective=effective, ceiling=ceiling, checkpointing=checkpointing)


def test_the_largest_micro_batch_that_fits_and_the_effective_batch_is_kept():
    fitted = fit(LinearMemory(), 520)  # 100 + 50 m <= 520: m = 8
    assert (fitted.micro_batch, fitted.gradient_checkpointing, fitted.fits) == (8, False, True)
    rows = {c.key: c for c in fitted.choices}
    assert "fits" in rows["micro_batch"].rule and rows["micro_batch"].alternative.startswith("9 needs")
    assert (
        not rows["enable_gradient_checkpointing"].value and "not needed" in rows["enable_gradient_checkpointing"].rule
    )
    assert fit(LinearMemory(), 700).micro_batch == 12  # not only divisors: 12 + 4 rows per step
    assert fit(LinearMemory(), 10_000).micro_batch == 16


def test_a_micro_batch_the_user_set_is_a_ceiling():
    assert fit(LinearMemory(), 10_000, ceiling=2).micro_batch == 2
    assert "2 is the micro-batch configured" in fit(LinearMemory(), 10_000, ceiling=2).choices[0].alternative
    assert fit(LinearMemory(), 160, ceiling=4).micro_batch == 1


def test_checkpointing_only_when_nothing_fits_without_it():
    fitted = fit(LinearMemory(), 145)  # no checkpointing: 150 for one row; with it 100 + 20 m
    assert (fitted.micro_batch, fitted.gradient_checkpointing) == (2, True)
    assert {c.key for c in fitted.choices} >= {"micro_batch", "enable_gradient_checkpointing"}
    kept_off = fit(LinearMemory(), 145, checkpointing=False)
    assert not kept_off.fits and kept_off.micro_batch == 1 and not kept_off.gradient_checkpointing
    assert "over the budget" in kept_off.warning and "--max-length" in kept_off.warning


def test_nothing_fits_gives_one_sequence_with_checkpointing_and_says_what_would():
    fitted = fit(LinearMemory(device="cuda"), 50)
    assert (fitted.micro_batch, fitted.gradient_checkpointing, fitted.fits) == (1, True, False)
    assert "--quantize 4bit" in fitted.warning


def test_cgroup_limits_v1_and_v2(tmp_path):
    proc = tmp_path / "cgroup"
    v1 = tmp_path / "fs" / "memory" / "job"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(3 * 2**30))
    (v1 / "memory.usage_in_bytes").write_text(str(2**30))
    proc.write_text("4:memory:/job\n0::/\n")
    assert cgroup_memory_left(proc, tmp_path / "fs") == 2 * 2**30
    (v1 / "memory.limit_in_bytes").write_text(str(2**63 - 4096))  # v1's "no limit"
    assert cgroup_memory_left(proc, tmp_path / "fs") is None
    v2 = tmp_path / "fs" / "user.slice"
    v2.mkdir()
    (v2 / "memory.max").write_text(str(2**30))
    (v2 / "memory.current").write_text(str(2**28))
    proc.write_text("0::/user.slice\n")
    assert cgroup_memory_left(proc, tmp_path / "fs") == 2**30 - 2**28
    (v2 / "memory.max").write_text("max\n")
    assert cgroup_memory_left(proc, tmp_path / "fs") is None
    assert cgroup_memory_left(tmp_path / "missing", tmp_path / "fs") is None


def test_half_precision_on_cpu_plans_with_a_wider_margin():
    cpu = Hardware("cpu", "CPU", 0.0, False, True, 2, 24.0)
    free = 10 * 2**30
    fp32, fp32_rule = memory_budget(None, cpu, free, "fp32")
    bf16, bf16_rule = memory_budget(None, cpu, free, "bf16")
    assert fp32 == int(free * 0.90) + CPU_FRAMEWORK_BYTES and fp32_rule.startswith("90% of available RAM")
    assert bf16 == int(free * 0.85) + CPU_FRAMEWORK_BYTES and bf16_rule.startswith("85% of available RAM")
    assert memory_budget(3.0, cpu, free, "bf16") == (3 * 2**30, "memory_budget")  # a budget you set is kept
