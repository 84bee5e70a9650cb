"""The training objective: summed next-token cross-entropy over target tokens.

Losses are summed here and divided by the target-token count of the whole accumulation
window by the loop, so every target token weighs the same whatever micro-batch it sits
in (the mean-of-means of naive accumulation over-weights short batches).

The output projection dominates small and medium models: for a 32,000-token vocabulary
the logits of one 512-token sequence take 65 MB in fp32, and most positions (prompts,
padding) carry no loss. ``TokenLoss`` therefore projects only the target positions, a
chunk at a time, and computes the gradient with respect to the hidden states in the same
pass (softmax minus one-hot, times the head weights), so neither full logits nor their
gradient ever exist. It applies only where the head is a frozen ``nn.Linear`` and the
model returns exactly ``head(hidden)`` as logits; ``verify`` checks that on a real batch
before training, and any model that fails it keeps the plain path.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from llmc_cli.data.tokenize import IGNORE

MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask")
CHUNK_BYTES = 64 * 2**20  # fp32 logits per chunk: ~512 rows of a 32k vocabulary, where the
# head's matmuls reach most of the CPU's peak (131-row chunks ran 26 % slower end to end)
ROW_MULTIPLE = 64  # rows of every head matmul: few distinct shapes (see _chunked_cross_entropy)


def target_count(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Tokens that carry loss after the one-position shift."""
    return batch["labels"][:, 1:].ne(IGNORE).sum()


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: batch[key] for key in MODEL_INPUTS if key in batch}


def plain_summed_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of cross-entropy over the batch's target tokens from full fp32 logits."""
    logits = model(**model_inputs(batch), use_cache=False).logits
    vocab = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1, :].reshape(-1, vocab).float(),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def _chunked_cross_entropy(hidden, weight, bias, targets, chunk_rows, want_grad):
    """Summed CE of ``linear(hidden)`` against ``targets``, and its gradient w.r.t. ``hidden`` if wanted.

    The two vocabulary-wide buffers (logits, log-probabilities) are allocated once per call
    and reused by every chunk: chunks that large are mapped fresh by the C allocator on each
    allocation, and the page faults would cost more than the large matmuls save.

    Every chunk's matmuls run on a multiple of ``ROW_MULTIPLE`` rows (the last chunk padded with
    zero rows, whose results are dropped). The number of target tokens differs in every batch,
    and oneDNN (bf16 on a CPU) builds and caches kernels, with a copy of the head's weights, for
    every new shape: unpadded, a bf16 run's RSS grew by about 100 MB a step without end.
    """
    rows_total, vocab = hidden.shape[0], weight.shape[0]
    rows = _round_up(max(1, min(chunk_rows, rows_total)), ROW_MULTIPLE)
    logits = torch.empty((rows, vocab), dtype=weight.dtype, device=hidden.device)
    log_probs = torch.empty((rows, vocab), dtype=torch.float32, device=hidden.device)
    loss = torch.zeros((), device=hidden.device, dtype=torch.float32)
    grad = torch.empty_like(hidden) if want_grad else None
    grad_rows = torch.empty((rows, hidden.shape[1]), dtype=weight.dtype, device=hidden.device) if want_grad else None
    for start in range(0, rows_total, rows):
        chunk = hidden[start : start + rows].to(weight.dtype)
        picked = targets[start : start + rows]
        n = chunk.shape[0]
        padded = min(rows, _round_up(n, ROW_MULTIPLE))
        if padded > n:
            chunk = torch.cat([chunk, chunk.new_zeros((padded - n, chunk.shape[1]))])
        chunk_logits = torch.mm(chunk, weight.t(), out=logits[:padded])
        if bias is not None:
            chunk_logits.add_(bias)
        chunk_log_probs = torch.log_softmax(chunk_logits, dim=-1, dtype=torch.float32, out=log_probs[:padded])
        loss -= chunk_log_probs[:n].gather(1, picked[:, None]).sum()
        if grad is not None:
            probs = chunk_log_probs.exp_()  # softmax minus one-hot = d(loss)/d(logits)
            probs[torch.arange(n, device=probs.device), picked] -= 1.0
            probs = probs.to(weight.dtype)
            torch.mm(probs, weight, out=grad_rows[:padded])
            grad[start : start + n] = grad_rows[:n]
    return loss, grad


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class _LinearCrossEntropy(torch.autograd.Function):
    """Autograd wrapper: the hidden-state gradient is computed in forward and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows):  # noqa: ANN001 (autograd signature)
        loss, grad = _chunked_cross_entropy(hidden, weight, bias, targets, chunk_rows, want_grad=True)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: ANN001
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.to(grad.dtype), None, None, None, None


@contextmanager
def _capture_head_input(head: torch.nn.Module):
    """Record the hidden states entering ``head`` and let it project only the last position."""
    captured: list[torch.Tensor] = []

    def hook(module, args):
        captured.append(args[0])
        return (args[0][:, -1:, :],)

    handle = head.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


class TokenLoss:
    """Summed target-token cross-entropy for one model; fused when the model allows it."""

    def __init__(self, model: torch.nn.Module) -> None:
        head = _output_head(model)
        self.head = head if _fusable(head) else None
        self.reason = "frozen linear head" if self.head is not None else "output head is trainable or not nn.Linear"

    @property
    def fused(self) -> bool:
        return self.head is not None

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.head is None:
            return plain_summed_loss(model, batch)
        with _capture_head_input(self.head) as captured:
            model(**model_inputs(batch), use_cache=False)
        hidden = captured[-1][:, :-1, :]
        labels = batch["labels"][:, 1:]
        mask = labels.ne(IGNORE)
        weight = self.head.weight
        chunk_rows = max(16, CHUNK_BYTES // (4 * weight.shape[0]))
        args = (hidden[mask], weight, self.head.bias, labels[mask], chunk_rows)
        if torch.is_grad_enabled() and args[0].requires_grad:
            return _LinearCrossEntropy.apply(*args)
        return _chunked_cross_entropy(*args, want_grad=False)[0]

    @torch.no_grad()
    def verify(self, model, batch: dict[str, torch.Tensor], rtol: float) -> bool:
        """Check the fused loss against full logits on one batch; fall back for good if they differ."""
        if self.head is None:
            return False
        was_training = model.training
        model.eval()
        try:
            fused, plain = self(model, batch), plain_summed_loss(model, batch)
        finally:
            model.train(was_training)
        if not torch.isclose(fused, plain, rtol=rtol, atol=1e-3).item():
            self.head = None
            self.reason = f"fused loss {fused.item():.4f} differs from full logits {plain.item():.4f}"
        return self.fused


def _output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    inner = getattr(model, "module", model)  # DDP and friends wrap the model in .module
    get = getattr(inner, "get_output_embeddings", None)
    return get() if callable(get) else None


def _fusable(head: torch.nn.Module | None) -> bool:
    return (
        type(head) is torch.nn.Linear
        and not any(p.requires_grad for p in head.parameters())
        and head.weight.device.type != "meta"
    )
