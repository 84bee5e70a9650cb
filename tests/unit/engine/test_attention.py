"""Per-example causal attention equals the stock masked SDPA on packed and padded batches."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmc_cli.optimize.attention import NAME, matches_stock_attention, use_packed_attention


def _model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=200,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)


def _packed_batch():
    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    # Row 0: examples of 10, 9 and 5 tokens; row 1: 16 tokens, then padding as its own segment.
    positions = torch.tensor([[*range(10), *range(9), *range(5)], [*range(16), *range(8)]])
    return ids, positions


def test_packed_logits_and_gradients_match_stock_sdpa():
    ids, positions = _packed_batch()
    stock, ours = _model(), _model()
    assert use_packed_attention(ours) == "sdpa" and ours.config._attn_implementation == NAME

    want = stock(input_ids=ids, position_ids=positions, use_cache=False).logits
    got = ours(input_ids=ids, position_ids=positions, use_cache=False).logits
    assert torch.allclose(got, want, atol=1e-5)
    want.square().mean().backward()
    got.square().mean().backward()
    for (name, a), (_, b) in zip(stock.named_parameters(), ours.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-4), name


def test_examples_in_one_row_do_not_see_each_other():
    model = _model()
    use_packed_attention(model)
    ids, positions = _packed_batch()
    alone = model(input_ids=ids[:1, 10:19], use_cache=False).logits
    packed = model(input_ids=ids[:1], position_ids=positions[:1], use_cache=False).logits[:, 10:19]
    assert torch.allclose(packed, alone, atol=1e-5)


def test_right_padded_rows_match_stock_attention_on_real_tokens():
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5])
    stock, ours = _model(), _model()
    use_packed_attention(ours)
    want = stock(input_ids=ids, attention_mask=mask, use_cache=False).logits
    got = ours(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert torch.allclose(got[mask.bool()], want[mask.bool()], atol=1e-5)


def test_a_model_that_differs_keeps_its_stock_attention():
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def halved(*args, **kwargs):  # stands in for a model-specific variant (soft-capping, sinks, windows)
        output, weights = sdpa_attention_forward(*args, **kwargs)
        return output * 0.5, weights

    AttentionInterface.register("test_halved", halved)
    model = _model()
    use_packed_attention(model)
    ids, positions = _packed_batch()
    inputs = {"input_ids": ids, "position_ids": positions}
    assert matches_stock_attention(model, model, inputs, "sdpa", atol=1e-3)
    assert model.config._attn_implementation == NAME
    assert not matches_stock_attention(model, model, inputs, "test_halved", atol=1e-3)
    assert model.config._attn_implementation == "test_halved"


def test_bf16_on_cpu_pads_each_example_to_few_shapes_with_the_same_result(monkeypatch):
    import torch.nn.functional as F

    from llmc_cli.optimize import attention

    ids, positions = _packed_batch()
    stock, ours = _model().to(torch.bfloat16), _model().to(torch.bfloat16)
    use_packed_attention(ours)
    seen, sdpa = [], F.scaled_dot_product_attention

    def recording(query, *args, **kwargs):
        seen.append(query.shape[2])
        return sdpa(query, *args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording)
    got = ours(input_ids=ids, position_ids=positions, use_cache=False).logits
    assert set(seen) == {attention.SEGMENT_MULTIPLE}  # examples of 5 to 16 tokens, each padded to 64
    want = stock(input_ids=ids, position_ids=positions, use_cache=False).logits
    assert torch.allclose(got.float(), want.float(), atol=5e-2)
    seen.clear()
    use_packed_attention(fp32 := _model())  # fp32 runs with the examples' own shapes
    fp32(input_ids=ids, position_ids=positions, use_cache=False)
    assert sorted(set(seen)) == [5, 8, 9, 10, 16]
