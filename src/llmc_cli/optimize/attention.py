"""Causal attention per packed example, without a block-diagonal mask.

A packed row holds several examples; position ids restart at 0 where each begins. The
stock SDPA path builds a (T x T) mask that blocks attention across examples and then runs
the masked kernel over the whole square, so most of the work lands on blocked entries. This
implementation cuts each row at its position-id restarts and runs causal SDPA on each
example alone: the same result, with work proportional to the sum of squared example
lengths instead of the row length squared.

It is registered with transformers' ``AttentionInterface`` under ``llmc_packed`` and applies
only to plain causal self-attention: the loop checks the logits against the stock
implementation on a real packed batch before training (see ``engine.loop``) and keeps the
stock path for any model that differs (sliding windows, soft-capping, attention sinks).
Rows are padded on the right only (llmc's collator), so causality alone keeps real tokens
from attending to padding; the 2-D padding mask is therefore not needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "llmc_packed"
SEGMENT_MULTIPLE = 64  # examples' lengths are padded to this on CPU in half precision (see _causal)


def packed_causal_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """(batch, heads, T, dim) in, (batch, T, heads, dim) out, as transformers' attention functions."""
    batch, _, length, _ = query.shape
    gqa = query.shape[1] != key.shape[1]
    multiple = SEGMENT_MULTIPLE if query.device.type == "cpu" and query.dtype != torch.float32 else 1
    rows = []
    for b, segments in enumerate(_row_segments(position_ids, batch, length)):
        parts = [
            _causal(
                query[b : b + 1, :, start:end],
                key[b : b + 1, :, start:end],
                value[b : b + 1, :, start:end],
                multiple,
                dropout_p=dropout,
                scale=scaling,
                enable_gqa=gqa,
            )
            for start, end in segments
        ]
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))
    output = rows[0] if batch == 1 else torch.cat(rows, dim=0)
    return output.transpose(1, 2).contiguous(), None


def _causal(query, key, value, multiple: int, **options) -> torch.Tensor:
    """Causal SDPA over one example, its length padded up to ``multiple`` with zeros at the end.

    Padding at the end changes nothing for the real positions (causality keeps them from the padded
    keys) and is cut off the output. It bounds the shapes the CPU's bf16 kernels see: with one shape
    per example length, a run's memory grew step after step (1,254 to 1,915 MB over 16 steps of a
    4-layer model at 4 x 512 tokens, where fp32 levelled off at 1,936); padded to 64, it levelled off
    at 1,594 MB, at the same speed (16.8 against 16.7 s for the 16 steps)."""
    n = query.shape[2]
    extra = -n % multiple
    if extra:
        query, key, value = (F.pad(t, (0, 0, 0, extra)) for t in (query, key, value))
    out = F.scaled_dot_product_attention(query, key, value, is_causal=True, **options)
    return out[:, :, :n] if extra else out


_cache: tuple[torch.Tensor | None, list[list[tuple[int, int]]]] = (None, [])


def _row_segments(position_ids: torch.Tensor | None, batch: int, length: int) -> list[list[tuple[int, int]]]:
    """(start, end) of each example in each row, read once per forward pass, not once per layer."""
    global _cache
    if position_ids is None:
        return [[(0, length)]] * batch
    if _cache[0] is position_ids:  # every layer of one forward pass gets the same tensor
        return _cache[1]
    ids = position_ids.expand(batch, -1).tolist()  # the one host read
    segments = []
    for row in ids:
        starts = [i for i, p in enumerate(row) if p == 0]
        if not starts or starts[0] != 0:
            starts = [0, *starts]
        segments.append(list(zip(starts, [*starts[1:], length], strict=True)))
    _cache = (position_ids, segments)
    return segments


def register() -> str:
    """Make ``llmc_packed`` known to transformers (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_causal_attention)
    return NAME


def use_packed_attention(model: torch.nn.Module) -> str | None:
    """Switch ``model`` to ``llmc_packed``; returns the implementation it had, or None if it cannot switch."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    if previous not in {"sdpa", "eager"} or getattr(config, "is_encoder_decoder", False):
        return None
    try:
        model.set_attn_implementation(register())
    except (ValueError, NotImplementedError, AttributeError):
        return None
    return previous


@torch.no_grad()
def matches_stock_attention(model, base, inputs: dict[str, torch.Tensor], stock: str, atol: float) -> bool:
    """Compare logits under ``llmc_packed`` and the ``stock`` implementation; keep the former only if they agree.

    ``model`` is what the loop calls (perhaps PEFT- or accelerate-wrapped); ``base`` the transformers
    model whose implementation is switched.
    """
    was_training = model.training
    model.eval()
    try:
        ours = model(**inputs, use_cache=False).logits
        base.set_attn_implementation(stock)
        reference = model(**inputs, use_cache=False).logits
    finally:
        model.train(was_training)
    agree = bool(torch.allclose(ours.float(), reference.float(), rtol=0.0, atol=atol))
    if agree:
        base.set_attn_implementation(NAME)
    return agree
