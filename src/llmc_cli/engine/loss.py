"""The training objective: summed next-token cross-entropy over target tokens.

Losses are summed here and divided by the target-token count of the whole accumulation
window by the loop, so every target token weighs the same whatever micro-batch it sits
in (the mean-of-means of naive accumulation over-weights short batches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmc_cli.data.tokenize import IGNORE

MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask")


def target_count(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Tokens that carry loss after the one-position shift."""
    return batch["labels"][:, 1:].ne(IGNORE).sum()


def summed_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of cross-entropy over the batch's target tokens, in fp32."""
    inputs = {key: batch[key] for key in MODEL_INPUTS if key in batch}
    logits = model(**inputs, use_cache=False).logits
    vocab = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1, :].reshape(-1, vocab).float(),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
