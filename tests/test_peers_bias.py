"""The bias encodings against peer implementations (the ``peers`` extra): Hugging Face's T5 buckets and Bloom's
ALiBi, x-transformers' ALiBi, T5 relative bias and dynamic position bias under equal parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from posenc import get_encoding
from posenc.encodings.alibi import alibi_slopes
from posenc.encodings.t5 import t5_relative_position_bucket


def _pe(name: str, n_heads: int, **options):
    return get_encoding(name, dim=8 * n_heads, n_heads=n_heads, **options)


# -- Hugging Face -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (16, 64), (64, 256), (8, 20), (33, 100)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_buckets_equal_hugging_face(bidirectional, num_buckets, max_distance):
    """HF's buckets read through its public ``compute_bias``: with bias table row ``b`` holding ``b``, the bias is the
    bucket of each (query, key) pair. One query at position 3000 against keys 0..6000: every distance in +-3000."""
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    config = t5.T5Config(d_model=16, d_kv=8, num_heads=2, relative_attention_num_buckets=num_buckets,
                         relative_attention_max_distance=max_distance, is_decoder=not bidirectional)
    attn = t5.T5Attention(config, has_relative_attention_bias=True)
    with torch.no_grad():
        attn.relative_attention_bias.weight.copy_(torch.arange(num_buckets, dtype=torch.float32)[:, None].expand(-1, 2))
    theirs = attn.compute_bias(1, 6001, past_seen_tokens=3000)[0, 0, 0].round().long()  # (Tk,): key j's bucket
    rel = torch.arange(6001) - 3000  # key minus query, as T5 measures it
    ours = t5_relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets,
                                       max_distance=max_distance)
    assert torch.equal(ours, theirs)


def test_t5_bias_equals_hugging_face_compute_bias():
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    config = t5.T5Config(d_model=32, d_kv=8, num_heads=4, relative_attention_num_buckets=32,
                         relative_attention_max_distance=128, is_decoder=True)
    attn = t5.T5Attention(config, has_relative_attention_bias=True)
    pe = _pe("t5", 4, causal=True)
    with torch.no_grad():
        pe.relative_attention_bias.weight.copy_(torch.randn_like(pe.relative_attention_bias.weight))
    attn.relative_attention_bias.load_state_dict(pe.relative_attention_bias.state_dict())
    # A KV-cache step: 3 new queries after 197 cached tokens.
    theirs = attn.compute_bias(3, 200, past_seen_tokens=197)[0]
    ours = pe.bias(torch.arange(197, 200), torch.arange(200))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("n_heads", [8, 12, 16])
def test_alibi_equals_bloom(n_heads):
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    t = 20
    mask = torch.ones(1, t, dtype=torch.long)
    theirs = bloom.build_alibi_tensor(mask, n_heads, torch.float32).view(n_heads, t)  # slope_h * j
    # The slopes themselves: Bloom's alibi at j = 1 is slope_h * 1.
    torch.testing.assert_close(alibi_slopes(n_heads), theirs[:, 1], rtol=1e-6, atol=0)
    # Bloom adds slope_h * j; the paper's -slope_h * (i - j) differs by the per-row constant -slope_h * i, which the
    # softmax ignores. Compare with each row's value at the diagonal subtracted.
    ours = _pe("alibi", n_heads, causal=True).bias(torch.arange(t), torch.arange(t))  # (H, T, T)
    ours_rel = ours - ours.diagonal(dim1=-2, dim2=-1)[:, :, None]
    theirs_rel = theirs[:, None, :] - theirs[:, :, None]  # slope * j - slope * i
    torch.testing.assert_close(ours_rel, theirs_rel, rtol=1e-6, atol=1e-5)
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    probs = ours.masked_fill(~causal, float("-inf")).softmax(-1)
    their_probs = theirs[:, None, :].expand(-1, t, -1).masked_fill(~causal, float("-inf")).softmax(-1)
    torch.testing.assert_close(probs, their_probs, rtol=1e-5, atol=1e-6)


def test_alibi_left_padding_positions_equal_bloom():
    """Bloom counts positions over non-padding tokens (cumsum of the mask); the same positions give the same bias."""
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    n_heads, t = 8, 10
    mask = torch.ones(2, t, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    theirs = bloom.build_alibi_tensor(mask, n_heads, torch.float32).view(2, n_heads, t)
    pos = ((mask.cumsum(-1) - 1) * mask).long()  # Bloom's positions
    ours = _pe("alibi", n_heads, causal=True).bias(pos, pos)  # (B, H, T, T)
    ours_rel = ours - ours.diagonal(dim1=-2, dim2=-1)[..., None]
    theirs_rel = theirs[:, :, None, :] - theirs[:, :, :, None]
    keep = (mask[:, None, :, None] * mask[:, None, None, :]).bool().expand_as(ours_rel)
    torch.testing.assert_close(ours_rel[keep], theirs_rel[keep], rtol=1e-6, atol=1e-5)


# -- x-transformers ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_heads", [4, 8, 12])
def test_alibi_equals_x_transformers(n_heads):
    xt = pytest.importorskip("x_transformers.x_transformers")
    theirs = xt.AlibiPositionalBias(heads=n_heads)
    torch.testing.assert_close(theirs.slopes.view(-1), alibi_slopes(n_heads), rtol=0, atol=0)
    ours = _pe("alibi", n_heads, causal=False)  # x-transformers uses the symmetric form -slope * |i - j|
    i, j = 5, 13
    torch.testing.assert_close(ours.bias(torch.arange(j - i, j), torch.arange(j)), theirs(i, j), rtol=0, atol=0)
    # Their custom-position entry point, with per-sequence positions.
    pos = torch.tensor([[0, 2, 3, 7, 9], [4, 5, 6, 7, 8]])
    torch.testing.assert_close(ours.bias(pos, pos), theirs.forward_custom_pos(pos), rtol=0, atol=0)


@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (16, 40)])
@pytest.mark.parametrize("causal", [True, False])
def test_t5_bias_equals_x_transformers(causal, num_buckets, max_distance):
    xt = pytest.importorskip("x_transformers.x_transformers")
    n_heads = 4
    theirs = xt.RelativePositionBias(scale=1.0, causal=causal, num_buckets=num_buckets, max_distance=max_distance,
                                     heads=n_heads)
    ours = _pe("t5", n_heads, causal=causal, num_buckets=num_buckets, max_distance=max_distance)
    with torch.no_grad():
        theirs.relative_attention_bias.weight.copy_(ours.relative_attention_bias.weight)
    i, j = 7, 300
    torch.testing.assert_close(ours.bias(torch.arange(j - i, j), torch.arange(j)), theirs(i, j), rtol=0, atol=0)


@pytest.mark.parametrize("log_distance", [True, False])
def test_dynamic_bias_equals_x_transformers(log_distance):
    xt = pytest.importorskip("x_transformers.x_transformers")
    n_heads, hidden, depth = 4, 16, 2
    theirs = xt.DynamicPositionBias(dim=hidden, heads=n_heads, depth=depth, log_distance=log_distance)
    ours = _pe("dynamic", n_heads, hidden=hidden, depth=depth, log_distance=log_distance)
    their_linears = [m for m in theirs.modules() if isinstance(m, nn.Linear)]
    our_linears = [m for m in ours.mlp if isinstance(m, nn.Linear)]
    assert len(their_linears) == len(our_linears) == depth + 1
    for mine, other in zip(our_linears, their_linears):
        other.load_state_dict(mine.state_dict())
    i, j = 6, 24
    torch.testing.assert_close(ours.bias(torch.arange(j - i, j), torch.arange(j)), theirs(i, j),
                               rtol=1e-6, atol=1e-6)
