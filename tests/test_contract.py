"""The contract every registered encoding keeps. Parametrized over the whole registry, so a new encoding is
checked the moment its file lands in ``posenc/encodings/``."""

from __future__ import annotations

import copy

import pytest
import torch

import posenc
from layer_inputs import attend
from posenc import KVCache, Transformer, TransformerConfig, get_encoding

NAMES = posenc.registered_names()
DIM, HEADS, KV_HEADS, MAX_LEN = 32, 4, 2, 64
FAR = 10**6

# Encodings whose rotate returns q/k of another width than head_dim (declared by rotated_width; values and the
# attention output keep head_dim). Deliberately listed: any other encoding must keep q/k shapes.
WIDENING = {"pope"}  # PoPE (arXiv 2509.10534): [mu cos, mu sin] per channel, 2 * head_dim

# Options an encoding needs only for the far-position check, with the reason.
FAR_OPTIONS = {
    # xPos scales q and k by zeta^(+-(pos - center)/scale_base); the center must sit near the positions used.
    "xpos": {"center": FAR},
}


def _pe(name: str, **kw) -> posenc.PositionalEncoding:
    return get_encoding(name, dim=DIM, n_heads=HEADS, max_seq_len=MAX_LEN, **kw)


def _model(name: str, kind: str = "decoder", seed: int = 0, **options) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(kind=kind, vocab_size=40, dim=DIM, n_layers=2, n_heads=HEADS, n_kv_heads=KV_HEADS,
                            max_seq_len=MAX_LEN, encoding=name, encoding_options=options)
    return Transformer(cfg).eval()


def _tokens(batch: int = 2, length: int = 11) -> torch.Tensor:
    return torch.randint(0, 40, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", NAMES)
def test_registry_row(name):
    info = {row.name: row for row in posenc.list_encodings()}[name]
    assert info.family in posenc.base.FAMILIES
    assert info.summary, f"{name} needs a docstring whose first line says what it is"
    assert info.paper is None or info.paper[:4].isdigit(), "paper is an arXiv id such as '2104.09864'"
    assert info.parameters >= 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_hook_shapes_and_dtypes(name, dtype):
    pe = _pe(name)
    b, t, d = 2, 10, DIM // HEADS
    pos = torch.arange(t)
    x = torch.randn(b, t, DIM, dtype=dtype)
    out = pe.embed(x, pos)
    assert out.shape == x.shape and out.dtype == dtype
    q, k, v = torch.randn(b, HEADS, t, d, dtype=dtype), torch.randn(b, KV_HEADS, t, d, dtype=dtype), \
        torch.randn(b, KV_HEADS, t, d, dtype=dtype)
    q2, k2 = pe.rotate(q, k, pos, pos)
    # rotate keeps q/k shapes, except for an encoding that declares another width on purpose (WIDENING)
    width = pe.rotated_width(d)
    assert (width != d) == (name in WIDENING), f"{name} declares q/k width {width} for head_dim {d}"
    assert q2.shape == (*q.shape[:-1], width) and k2.shape == (*k.shape[:-1], width)
    assert q2.dtype == k2.dtype == dtype
    bias = pe.bias(pos, pos)
    if bias is not None:
        assert bias.shape[-3:] == (HEADS, t, t) and bias.dtype == torch.float32 and torch.isfinite(bias).all()
    for causal in (False, True):
        o = attend(q2, k2, v, pe, q_pos=pos, k_pos=pos, causal=causal)
        assert o.shape == (b, HEADS, t, d) and o.dtype == dtype and torch.isfinite(o.float()).all()


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("name", NAMES)
def test_explicit_positions_equal_defaults(name, kind):
    model, x = _model(name, kind), _tokens()
    default = model(x)
    explicit = model(x, positions=torch.arange(x.shape[1]))
    per_sequence = model(x, positions=torch.arange(x.shape[1]).expand(x.shape[0], -1))
    torch.testing.assert_close(explicit, default)
    torch.testing.assert_close(per_sequence, default)


@pytest.mark.parametrize("name", NAMES)
def test_kv_cache_decoding_equals_full_forward(name):
    model, x = _model(name), _tokens()
    full = model(x)
    cache = KVCache()
    prefix = model(x[:, :4], cache=cache)  # a prompt, then one token at a time
    steps = [prefix] + [model(x[:, i:i + 1], cache=cache) for i in range(4, x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name, tmp_path):
    a, x = _model(name, seed=0), _tokens()
    with torch.no_grad():  # make every parameter differ from a fresh init, trained tables included
        for p in a.parameters():
            p.add_(0.01 * torch.randn_like(p))
    b = _model(name, seed=1)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x), a(x))
    a.save(tmp_path / "m.pt")
    torch.testing.assert_close(Transformer.load(tmp_path / "m.pt").eval()(x), a(x))
    torch.testing.assert_close(copy.deepcopy(a)(x), a(x))


@pytest.mark.parametrize("name", NAMES)
def test_to_dtype_moves_and_keeps_tables_exact(name):
    model, x = _model(name), _tokens()
    ref = model(x).double()
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)
    model.to(torch.bfloat16)
    out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    model.to(torch.float32)  # back from bfloat16: cached tables must not have kept bfloat16 rounding
    fresh = dict(_pe(name).named_buffers())
    for bname, buf in model.pe.named_buffers():
        if bname in fresh and buf.is_floating_point() and buf.dim() >= 1 and buf.numel():
            n = min(buf.shape[0], fresh[bname].shape[0])
            torch.testing.assert_close(buf[:n], fresh[bname][:n], atol=0, rtol=0, msg=f"{name}.{bname} drifted")


@pytest.mark.parametrize("name", NAMES)
def test_far_positions(name):
    pe_cls = type(_pe(name))
    options = FAR_OPTIONS.get(name, {})
    model, x = _model(name, **options), _tokens(length=8)
    pos = torch.arange(FAR, FAR + x.shape[1])
    if _pe(name, **options).extrapolates:
        out = model(x, positions=pos)
        assert torch.isfinite(out).all(), f"{name} is not finite at position {FAR}"
    else:
        with pytest.raises(ValueError, match="max_seq_len"):
            model(x, positions=pos)
    assert pe_cls.name == name


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_trainable_encoding_parameter(name):
    model, x = _model(name), _tokens()
    model.train()
    loss = model(x).float().logsumexp(-1).mean()
    loss.backward()
    encodings = [m for m in model.modules() if isinstance(m, posenc.PositionalEncoding)]  # the stack's, each layer's
    for pe in encodings:
        for pname, p in pe.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and torch.isfinite(p.grad).all(), f"no finite gradient for {pname}"


@pytest.mark.parametrize("name", NAMES)
def test_encoder_decoder_model(name):
    torch.manual_seed(0)
    cfg = TransformerConfig(kind="encoder_decoder", vocab_size=40, dim=DIM, n_layers=1, n_heads=HEADS,
                            max_seq_len=MAX_LEN, encoding=name)
    model = Transformer(cfg).eval()
    src, tgt = _tokens(length=9), _tokens(length=6)
    full = model(src, tgt)
    assert full.shape == (2, 6, 40)
    memory, cache = model.encode(src), KVCache()
    steps = [model.head(model.decode(tgt[:, i:i + 1], memory, cache=cache)) for i in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_causal_must_be_a_bool(name):
    """Red team round four: ``causal="False"`` built a causal encoding (``bool("False")`` is True), silently, and so
    did 1, None, a list or a tensor; the constructor now refuses anything but a bool, naming the argument."""
    for value in ("False", 1, 0, None, [True], torch.tensor(True)):
        with pytest.raises(TypeError, match=r"causal must be True or False \(a bool\); got .*decoder"):
            _pe(name, causal=value)
    assert _pe(name, causal=True).causal is True and _pe(name, causal=False).causal is False


def test_attention_causal_must_be_a_bool():
    """``posenc.attention(..., causal="no")`` attended causally; ``causal=None`` bidirectionally: a bool only now."""
    q = k = v = torch.randn(1, HEADS, 3, DIM // HEADS)
    for value in ("no", 1, None, torch.tensor(False)):
        with pytest.raises(TypeError, match=r"posenc.attention: causal must be True or False \(a bool\)"):
            posenc.attention(q, k, v, causal=value)
        with pytest.raises(TypeError, match="causal must be"):
            posenc.explain(q, k, v, causal=value)


@pytest.mark.parametrize("name", NAMES)
def test_meta_round_trip_deferred_init(name):
    """Red team round four: ``model.to("meta")`` (sizing a model, deferred initialisation) crashed for the rotary and
    sinusoidal encodings, whose cached tables were rebuilt by reading position values (Tensor.item() on meta). A model
    moved to meta and materialized again (``to_empty`` + ``load_state_dict``) computes what the original does."""
    a, x = _model(name), _tokens()
    b = _model(name, seed=1).to("meta")
    assert all(p.device.type == "meta" for p in b.parameters())
    b.to_empty(device="cpu")
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.eval()(x), a(x))


@pytest.mark.parametrize("name", NAMES)
def test_a_model_on_meta_runs_a_forward_for_shapes(name):
    """Red team, round five: a forward on meta tensors (shape inference, FLOP counting) raised Tensor.item() on meta,
    for every encoding (the token-id check, then the position checks of the bias and term encodings); checks that
    read values are skipped on meta, as under torch.compile, and the logits come out on meta with the right shape."""
    model = _model(name).to("meta")
    x = _tokens().to("meta")
    with torch.no_grad():
        out = model(x)
    assert out.device.type == "meta" and out.shape == (*x.shape, model.cfg.vocab_size)
