"""The fused target-only loss equals full-logit cross-entropy, in value and in gradient."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from llmc_cli.data.tokenize import IGNORE
from llmc_cli.engine import loss as loss_module
from llmc_cli.engine.loss import TokenLoss, plain_summed_loss, target_count


def _model(seed=0, tie=False, modules_to_save=None):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
    )
    base = LlamaForCausalLM(config)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", modules_to_save=modules_to_save)
    model = get_peft_model(base, lora)
    for name, param in model.named_parameters():  # non-zero B so that LoRA changes the output
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model


def _batch(seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 300, (3, 40), generator=generator)
    labels = ids.clone()
    labels[:, :15] = IGNORE  # prompts
    labels[2, 30:] = IGNORE  # padding
    return {"input_ids": ids, "labels": labels, "attention_mask": (labels[:, :] != -999).long()}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("tie", [False, True])
def test_fused_loss_matches_full_logits_in_value_and_gradient(tie, monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_BYTES", 4 * 300 * 64)  # several chunks even for 90 targets
    batch = _batch()
    plain_model, fused_model = _model(tie=tie), _model(tie=tie)
    fused = TokenLoss(fused_model)
    assert fused.fused

    expected = plain_summed_loss(plain_model, batch)
    expected.backward()
    got = fused(fused_model, batch)
    (got * 1.0).backward()

    assert torch.allclose(got, expected, rtol=1e-5)
    assert target_count(batch).item() == 2 * 25 + 15
    want, have = _grads(plain_model), _grads(fused_model)
    assert want.keys() == have.keys() and len(want) > 0
    for name in want:
        assert torch.allclose(have[name], want[name], rtol=1e-4, atol=1e-6), name


def test_scaled_backward_scales_the_gradient():
    model = _model()
    loss = TokenLoss(model)
    (loss(model, _batch()) * 0.25).backward()
    quarter = _grads(model)
    model.zero_grad()
    loss(model, _batch()).backward()
    for name, grad in _grads(model).items():
        assert torch.allclose(quarter[name] * 4, grad, rtol=1e-5, atol=1e-7)


def test_trainable_head_keeps_the_full_logit_path():
    model = _model(modules_to_save=["lm_head"])
    loss = TokenLoss(model)
    assert not loss.fused and "trainable" in loss.reason
    assert torch.allclose(loss(model, _batch()), plain_summed_loss(model, _batch()))


def test_verify_falls_back_when_the_model_rescales_its_logits():
    model = _model()
    model.eval()
    loss = TokenLoss(model)
    # A model whose logits are not head(hidden): e.g. soft-capping or a logit scale.
    model.base_model.model.lm_head.register_forward_hook(lambda module, args, out: out * 0.5)
    assert not loss.verify(model, _batch(), rtol=1e-4)
    assert "differs from full logits" in loss.reason
    assert torch.allclose(loss(model, _batch()), plain_summed_loss(model, _batch()))


def test_the_head_matmuls_see_few_shapes_whatever_the_target_count():
    """Every batch has its own target count; oneDNN caches kernels per shape (bf16 on a CPU grew
    ~100 MB a step with one shape per batch), so the head's matmuls run on multiples of 64 rows."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MatmulRows(TorchDispatchMode):
        rows: set[int] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.mm.out) and args[1].shape[0] in (32, 300):
                self.rows.add(args[0].shape[0])  # (rows, hidden) x (hidden, vocab) or (rows, vocab) x (vocab, hidden)
            return func(*args, **(kwargs or {}))

    model = _model()
    fused = TokenLoss(model)
    with MatmulRows() as seen:
        for prompt in (3, 11, 17, 29):  # 3 x (40 - prompt) targets, minus padding
            batch = _batch()
            batch["labels"][:, :prompt] = IGNORE
            fused(model, batch).backward()
    head_rows = {rows for rows in seen.rows if rows != 3 * 40}  # the model's own (batch x length) matmuls
    assert head_rows == {64, 128}, seen.rows
