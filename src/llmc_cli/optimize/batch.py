"""Fit the micro-batch and gradient checkpointing to the memory a run may use (``OPTIMIZE_MEMORY``).

The effective batch (batch x accumulation) is the optimiser's business and is kept exactly: only
how many rows go through one forward pass (the micro-batch) changes. Each loader batch is cut
into micro-batches (``engine/recovery.py``) and the loss is normalised over the whole step, so
every optimizer step sees the same rows in the same order, and the micro-batch can be any size,
not only a divisor. How far it may grow is the caller's ``ceiling``: on a GPU the effective
batch (larger micro-batches train faster there); on a CPU the configured micro-batch (a larger
one was not faster on 2 cores, and it takes memory the rest of the machine needs).

The rule, each step of it recorded as a :class:`Choice` for the "why" table:
1. the largest micro-batch whose estimated peak fits the budget without gradient checkpointing
   (never above a micro-batch the user set);
2. if none fits, gradient checkpointing on (when its setting is ``auto``), and again the largest;
3. if even one sequence does not fit, one sequence with checkpointing, and a warning with what
   would fit (QLoRA on a GPU, a shorter ``max_length``, a smaller model).
Out-of-memory recovery stays on behind it: an estimate that is short still ends in a smaller
micro-batch, not a failed run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llmc_cli.optimize.memory import MemoryEstimate, MemoryModel

GiB = 2**30


@dataclass(frozen=True)
class Choice:
    """One resolved value and why: the rule that chose it, and the alternative it was weighed against."""

    key: str
    value: object
    rule: str
    alternative: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BatchFit:
    micro_batch: int
    gradient_checkpointing: bool
    estimate: MemoryEstimate
    fits: bool
    choices: list[Choice]
    warning: str = ""


def fit_batch(
    memory: MemoryModel,
    budget_bytes: int,
    budget_rule: str,
    *,
    effective: int,
    ceiling: int,
    checkpointing: bool | str,
) -> BatchFit:
    """The largest micro-batch (and checkpointing only if needed) whose estimate fits ``budget_bytes``.

    Args:
        effective: rows per optimizer step (batch x accumulation), kept.
        ceiling: the largest micro-batch to consider (the effective batch, or one the user set).
        checkpointing: the setting; ``"auto"`` lets the fit turn it on, True/False are kept.
    """
    modes = [False, True] if checkpointing == "auto" else [bool(checkpointing)]
    budget = f"{budget_bytes / GiB:.1f} GiB ({budget_rule})"
    for mode in modes:
        micro = _largest_fitting(memory, ceiling, effective, mode, budget_bytes)
        if micro:
            return _fitted(memory, micro, effective, ceiling, mode, budget, checkpointing)
    mode = modes[-1]
    estimate = memory.estimate(1, mode, effective)
    warning = (
        f"Even a micro-batch of 1 with gradient checkpointing {'on' if mode else 'off'} is estimated at "
        f"{estimate.total_bytes / GiB:.1f} GiB, over the budget of {budget}. " + _what_fits(memory)
    )
    choices = [
        Choice("micro_batch", 1, f"nothing fits {budget}: one sequence at a time", "none fits"),
        Choice("enable_gradient_checkpointing", mode, "the least memory there is" if mode else "set by you"),
    ]
    return BatchFit(1, mode, estimate, False, choices, warning)


def _largest_fitting(memory, ceiling: int, effective: int, mode: bool, budget_bytes: int) -> int:
    """The largest micro-batch up to ``ceiling`` whose estimate fits (0 for none); estimates grow with it."""
    low, high = 0, ceiling
    while low < high:
        middle = (low + high + 1) // 2
        if memory.estimate(middle, mode, effective).total_bytes <= budget_bytes:
            low = middle
        else:
            high = middle - 1
    return low


def _fitted(memory, micro, effective, ceiling, mode, budget, setting) -> BatchFit:
    estimate = memory.estimate(micro, mode, effective)
    if micro < ceiling:
        alternative = f"{micro + 1} needs {memory.estimate(micro + 1, mode, effective).total_bytes / GiB:.2f} GiB"
    elif ceiling < effective:
        alternative = f"larger is not tried: {ceiling} is the micro-batch configured"
    else:
        alternative = "the whole effective batch at once already fits"
    choices = [
        Choice(
            "micro_batch",
            micro,
            f"largest that fits {budget}: estimated {estimate.total_bytes / GiB:.2f} GiB",
            alternative,
        ),
    ]
    if setting == "auto":
        if mode:
            rule = "on: no micro-batch fits without it"
            alternative = f"off: 1 sequence needs {memory.estimate(1, False, effective).total_bytes / GiB:.2f} GiB"
        else:
            rule = "off: not needed to fit (it costs about a third more compute)"
            alternative = f"on: {memory.estimate(micro, True, effective).total_bytes / GiB:.2f} GiB at this micro-batch"
        choices.append(Choice("enable_gradient_checkpointing", mode, rule, alternative))
    return BatchFit(micro, mode, estimate, True, choices)


def _what_fits(memory: MemoryModel) -> str:
    if memory.device == "cuda" and memory.quantize == "none":
        return "Try --quantize 4bit (QLoRA), a shorter --max-length, or a smaller model."
    return "Try a shorter --max-length or a smaller model; out-of-memory recovery will still try smaller steps."
