"""A cheaper LoRA dropout for CPUs.

PEFT applies ``nn.Dropout`` to the input of every adapted layer: seven full activation
tensors per decoder layer per micro-batch. On CPU, ``bernoulli_`` draws one random number
per element and dominated that cost (11.6 ms for a 1536 x 512 tensor on 2 cores, against
4.3 ms here). ``FastDropout`` draws 64 random bits at a time and splits them into four
16-bit lanes, each compared with a threshold, so one draw decides four elements. The drop
probability is rounded to a multiple of 1/65536 (0.05 becomes 0.050003); everything else
(independent masks per layer and per step, 1/(1-p) scaling, identity in eval mode) is the
same as ``nn.Dropout``. GPUs keep ``nn.Dropout``, whose fused kernel is already fast.
"""

from __future__ import annotations

import torch

LANES = 4  # 16-bit lanes per 64-bit draw
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class FastDropout(torch.nn.Module):
    """Inverted dropout with a 16-bit-resolution drop probability."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * 65536) - 32768  # lanes below it are dropped
        self.scale = 1.0 / (1.0 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        n = x.numel()
        draws = torch.randint(INT64_MIN, INT64_MAX, ((n + LANES - 1) // LANES,), dtype=torch.int64, device=x.device)
        lanes = draws.view(torch.int16)[:n].view(x.shape)
        return x * torch.where(lanes >= self.threshold, self.scale, 0.0).to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_lora_dropout(model: torch.nn.Module) -> int:
    """Swap PEFT's ``lora_dropout`` modules for ``FastDropout``; returns how many were swapped."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                dropouts[name] = FastDropout(dropout.p)
                swapped += 1
    return swapped
