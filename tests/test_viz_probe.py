"""The pictures of one attention call on a sentence (posenc.viz probe kinds) against the encodings' own hooks.

Each data function is checked against what :func:`posenc.attention` does with the same call (weights from one-hot
values) and against the paper's formula written out here; the probe runs in float64, so the tolerances are float64
rounding of sums of at most a few hundred terms of size <= ~50 (1e-12 absolute is far above it and far below any
real difference).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from posenc import Transformer, TransformerConfig, attention, get_encoding, viz
from posenc.cli import main
from posenc.encodings.deberta import deberta_c2p_index, deberta_p2c_index
from posenc.gallery import CAPTIONS, render_gallery

TEXT = "the cat sat on the mat"  # 22 bytes: "the" twice, so equal tokens can be compared
TOL = {"atol": 1e-12, "rtol": 0.0}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _pe(name: str, *, causal: bool = True, **options):
    return get_encoding(name, dim=32, n_heads=4, max_seq_len=64, causal=causal, **options).eval()


def _probs(probe: viz.AttentionProbe, backend: str = "reference") -> torch.Tensor:
    """``posenc.attention`` of the probe's call with one-hot values: its weights (plus any value term), (H, Tq, Tk)."""
    call = probe.call
    tk = call.k.shape[2]
    eye = torch.eye(tk, dtype=call.q.dtype).expand(1, call.k.shape[1], tk, tk)
    with torch.no_grad():
        out = attention(call.q, call.k, eye, call.pe, q_pos=call.q_pos, k_pos=call.k_pos, causal=call.causal,
                        features=call.features, layer=call.layer, backend=backend)
    return out[0]


def _plain(probe: viz.AttentionProbe) -> torch.Tensor:
    call = probe.call
    return (call.q @ call.k.transpose(-2, -1))[0] * call.scale  # (H, T, T)


def _softmax(logits: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~visible, float("-inf")).softmax(-1)


# -- which kinds fit, from the hooks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name,expected", [
    ("fox", ["gates", "logits"]),
    ("data_dependent_alibi", ["gates", "logits"]),
    ("stick_breaking", ["normalizer"]),
    ("sinks", ["normalizer"]),
    ("inkling", ["logits"]),
    ("deberta", ["logits", "disentangled"]),
    ("rope", []),
    ("alibi", []),
    ("nope", []),
])
def test_probe_kinds_of_each_encoding(name, expected, causal):
    kinds = viz.applicable_kinds(_pe(name, causal=causal))
    assert [k for k in kinds if k in viz.PROBE_KINDS] == expected


def test_probe_kinds_follow_the_hooks_not_the_name():
    per_row = _pe("data_dependent_alibi", per_row=True)  # per-row gates: no per-token log_f, still a logit term
    assert [k for k in viz.applicable_kinds(per_row) if k in viz.PROBE_KINDS] == ["logits"]
    own_projections = _pe("deberta", share_att_key=False)  # reads no layer: no c2p/p2c through W_q, W_k
    assert "disentangled" not in viz.applicable_kinds(own_projections)
    around_fox = _pe("sinks", base="fox")  # the sink normaliser around FoX's terms: both pictures
    assert [k for k in viz.applicable_kinds(around_fox) if k in viz.PROBE_KINDS] == ["gates", "logits", "normalizer"]
    # built for causal attention only, but called bidirectionally (causal=False): no probe can run, no probe kind
    one_way = get_encoding("fox", dim=32, n_heads=4, causal=False, bidirectional=False)
    assert not set(viz.applicable_kinds(one_way)) & set(viz.PROBE_KINDS)
    with pytest.raises(ValueError, match="built for causal attention"):
        viz.logits_data(one_way)


# -- the probe --------------------------------------------------------------------------------------------------------
def test_fixed_probe_is_a_pre_norm_layer_on_the_bytes():
    pe = _pe("fox")
    probe = viz.attention_probe(pe, text=TEXT)
    t = len(TEXT)
    assert probe.labels == tuple(c if c != " " else "␣" for c in TEXT)
    assert probe.x.shape == (1, t, 32) and probe.x.dtype == torch.float64
    torch.testing.assert_close(probe.x.pow(2).mean(-1), torch.ones(1, t, dtype=torch.float64))  # RMS-normalised
    torch.testing.assert_close(probe.x[0, 0], probe.x[0, 15])  # "t" of both "the": one vector per byte value
    assert probe.call.causal and probe.visible.equal(torch.ones(t, t, dtype=torch.bool).tril())
    # the call holds what the encoding's own hook makes from that input, for that layer
    again = pe.features(probe.x, torch.arange(t), layer=probe.call.layer)
    torch.testing.assert_close(probe.call.features["log_f"], again["log_f"], **TOL)
    # deterministic: the same text gives the same call, a longer text the same vectors for its first bytes
    longer = viz.attention_probe(pe, text=TEXT + " today")
    torch.testing.assert_close(longer.x[0, :t], probe.x[0], **TOL)
    other = viz.attention_probe(pe, text=TEXT, seed=1)
    assert not torch.allclose(other.x, probe.x)


def test_probe_of_a_model_is_its_layers_own_call(tmp_path):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind="decoder", dim=32, n_heads=4, n_layers=2, max_seq_len=64,
                                          encoding="fox")).eval()
    path = tmp_path / "fox.pt"
    model.save(path)
    maps = viz.attention_data(model, TEXT)  # (L, H, T, T)
    for layer in (0, 1):
        probe = viz.attention_probe(str(path), text=TEXT, layer=layer)
        assert probe.x is None and f"layer {layer}" in probe.source
        assert probe.call.layer.index == layer and probe.call.causal
        change = viz.logits_data(probe)
        # the layer's weights are the softmax of its plain scores plus the decay drawn (float32, as the model runs:
        # logits of size <= ~10 round to ~1e-6, and the weights with them)
        assert change.added.dtype == torch.float32
        torch.testing.assert_close(_softmax(_plain(probe) + change.added, change.visible), maps[layer],
                                   atol=1e-5, rtol=0)
    first, second = (viz.gates_data(viz.attention_probe(model, text=TEXT, layer=i)).log_f for i in (0, 1))
    assert not torch.allclose(first, second)  # one FoX per layer, each with its own gate
    with pytest.raises(ValueError, match="layer=2 is out of range: the model has 2 self-attention layers"):
        viz.attention_probe(model, text=TEXT, layer=2)
    with pytest.raises(TypeError, match="only apply when the encoding is given by name"):
        viz.attention_probe(model, text=TEXT, causal=True)


def test_probe_errors():
    pe = _pe("fox")
    with pytest.raises(ValueError, match="non-empty"):
        viz.attention_probe(pe, text="")
    with pytest.raises(ValueError, match="text length"):
        viz.attention_probe(pe, text="a")
    with pytest.raises(ValueError, match="layer=1: a bare encoding is probed in one fixed layer"):
        viz.attention_probe(pe, text=TEXT, layer=1)
    with pytest.raises(ValueError, match=r"cannot draw 'gates' for stick_breaking: its features\(\) make no"):
        viz.gates_data(_pe("stick_breaking"))
    with pytest.raises(ValueError, match="cannot draw 'normalizer' for fox: it keeps the softmax.*gates, logits"):
        viz.normalizer_data(pe)
    with pytest.raises(ValueError, match="cannot draw 'logits' for rope.*waves"):
        viz.logits_data(_pe("rope"))
    with pytest.raises(ValueError, match="reads_layer"):
        viz.disentangled_data(_pe("inkling"))
    with pytest.raises(TypeError, match="PositionalEncoding or an AttentionProbe"):
        viz.logits_data("fox")
    with pytest.raises(ValueError, match="heads must be an int >= 1"):
        viz.logits("fox", heads=0, text="ab")


def test_by_distance():
    values = torch.arange(9.0).reshape(1, 3, 3)
    causal = torch.ones(3, 3, dtype=torch.bool).tril()
    distance, out = viz.by_distance(values, causal)
    assert distance.tolist() == [-2, -1, 0]
    nan = float("nan")
    torch.testing.assert_close(out[0], torch.tensor([[nan, nan, 0.0], [nan, 3.0, 4.0], [6.0, 7.0, 8.0]]),
                               equal_nan=True)
    distance, out = viz.by_distance(values[:, 1:], torch.ones(2, 3, dtype=torch.bool))  # 2 queries on 3 keys
    assert distance.tolist() == [-2, -1, 0, 1]  # the queries sit at keys 1 and 2
    torch.testing.assert_close(out[0], torch.tensor([[nan, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, nan]]), equal_nan=True)


# -- forget gates: FoX and data-dependent ALiBi ------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", ["fox", "data_dependent_alibi"])
def test_gate_decay_is_the_logit_difference_attention_adds(name, causal):
    pe = _pe(name, causal=causal)
    probe = viz.attention_probe(pe, text=TEXT)
    data = viz.gates_data(probe)
    t = len(TEXT)
    # the gates drawn are the encoding's features of the input drawn
    torch.testing.assert_close(data.log_f, pe.features(probe.x, torch.arange(t), layer=probe.call.layer)["log_f"][0],
                               **TOL)
    # the decay drawn is FoX's sum of the gates between key and query, written out (the reversed set after it)
    forward, backward = data.log_f[..., 0], data.log_f[..., -1]
    for i in (0, 5, t - 1):
        for j in range(t):
            if j <= i:
                expected = forward[:, j + 1:i + 1].sum(-1)
            elif causal:
                continue  # masked
            else:
                expected = backward[:, i + 1:j + 1].sum(-1)
            torch.testing.assert_close(data.decay[:, i, j], expected, **TOL)
    # ... and what posenc.attention adds: its weights are the softmax of the plain scores plus that decay
    for backend in ("reference", "chunked"):
        torch.testing.assert_close(_probs(probe, backend), _softmax(_plain(probe) + data.decay, data.visible), **TOL)
    query = t - 1 if causal else t // 2
    assert data.query == query and data.distance.tolist() == list(range(-query, t - query))
    torch.testing.assert_close(data.profile, data.decay[:, query].masked_fill(~data.visible[query], float("nan")),
                               equal_nan=True)


def test_constant_gate_is_alibi_beside_plain_alibi():
    """FoX's exact test: a constant gate log f = -m is causal ALiBi with slope m; ALiBi beside it is the registry's."""
    pe = _pe("fox")
    with torch.no_grad():
        pe.gate.weight.zero_()
        pe.gate.bias.fill_(1.5)
    data = viz.gates_data(pe, text=TEXT)
    slope = -F.logsigmoid(torch.tensor(1.5, dtype=torch.float64))
    i, j = torch.arange(len(TEXT))[:, None], torch.arange(len(TEXT))
    torch.testing.assert_close(data.decay[:, data.visible], (-slope * (i - j))[data.visible].expand(4, -1), **TOL)
    alibi = get_encoding("alibi", dim=32, n_heads=4, max_seq_len=64, causal=True)
    pos = torch.arange(len(TEXT))
    expected = alibi.bias(pos, pos)[:, -1].double()  # the last query, every key (all visible)
    torch.testing.assert_close(data.alibi, expected, **TOL)
    torch.testing.assert_close(data.profile, slope * data.distance.double().expand(4, -1), **TOL)


# -- Inkling ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("log_scaling", [None, 4])
def test_inkling_logits_are_each_querys_relative_profile(log_scaling):
    pe = _pe("inkling", rel_extent=8, log_scaling_n_floor=log_scaling, log_scaling_alpha=0.5)
    probe = viz.attention_probe(pe, text=TEXT)
    change = viz.logits_data(probe)
    t = len(TEXT)
    curves = probe.call.features["r"][0] @ pe.profiles.double()  # (H, T, rel_extent): each query's own curve
    bias = torch.zeros(4, t, t, dtype=torch.float64)
    for i in range(t):
        for j in range(max(0, i - 7), i + 1):  # 0 <= i - j < rel_extent; 0 beyond and for later keys
            bias[:, i, j] = curves[:, i, i - j]
    tau = torch.ones(t, dtype=torch.float64)
    if log_scaling:
        tau = 1 + 0.5 * torch.log(((torch.arange(t, dtype=torch.float64) + 1.0) / log_scaling).clamp(min=1.0))
    expected = tau[:, None] * (_plain(probe) + bias) - _plain(probe)  # logits tau_i (q.k scale + bias) minus q.k scale
    torch.testing.assert_close(change.added, expected, **TOL)
    torch.testing.assert_close(_probs(probe), _softmax(_plain(probe) + change.added, change.visible), **TOL)
    if not log_scaling:  # the "by distance" view: row i is query i's curve, backwards from the query
        distance, profiles = viz.by_distance(change.added, change.visible)
        assert distance.tolist() == list(range(-(t - 1), 1))
        torch.testing.assert_close(profiles[:, 10, -8:], curves[:, 10].flip(-1), **TOL)


# -- DeBERTa ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("convention", ["released", "paper"])
def test_deberta_content_c2p_and_p2c(convention):
    pe = _pe("deberta", causal=False, position_buckets=8, max_relative_positions=16, p2c_convention=convention)
    probe = viz.attention_probe(pe, text=TEXT)
    data = viz.disentangled_data(probe)
    call, t = probe.call, len(TEXT)
    factor = 1 / math.sqrt(3)  # DeBERTa's 1/sqrt(3d) with two position terms: scale / sqrt(3)
    table = pe.relative_table().double()  # (2S, dim), layer-normalised
    k_r, q_r = call.layer.project_k(table), call.layer.project_q(table)  # (2S, H, D): W_k R and W_q R
    bucket = pe.buckets(torch.arange(t), torch.arange(t))[0]  # (T, T) signed buckets of i - j
    c2p_row, p2c_row = deberta_c2p_index(bucket, pe.span), deberta_p2c_index(bucket, pe.span, convention)
    q, k = call.q[0], call.k[0]  # (H, T, D)
    c2p = torch.einsum("hid,ijhd->hij", q, k_r[c2p_row])  # q_i . K^r_delta(i, j)
    p2c = torch.einsum("hjd,ijhd->hij", k, q_r[p2c_row])  # k_j . Q^r_delta'(i, j)
    torch.testing.assert_close(data.c2p, c2p * call.scale * factor, **TOL)
    torch.testing.assert_close(data.p2c, p2c * call.scale * factor, **TOL)
    torch.testing.assert_close(data.content, _plain(probe) * factor, **TOL)
    logits = data.content + data.c2p + data.p2c
    torch.testing.assert_close(_probs(probe), _softmax(logits, data.visible), **TOL)
    torch.testing.assert_close(viz.logits_data(probe).added, logits - _plain(probe), **TOL)


# -- normalisers: stick-breaking and sinks -----------------------------------------------------------------------------
@pytest.mark.parametrize("remainder", ["none", "value"])
def test_stick_breaking_weights_softmax_and_remainder(remainder):
    pe = _pe("stick_breaking", remainder=remainder)
    probe = viz.attention_probe(pe, text=TEXT)
    data = viz.normalizer_data(probe)
    z, t = _plain(probe), len(TEXT)  # stick-breaking adds no logit term: its logits are the plain scores
    beta = torch.sigmoid(z)
    expected = torch.zeros_like(z)
    for i in range(t):
        for j in range(i):  # the paper's j < i: a query breaks nothing of its own key
            expected[:, i, j] = beta[:, i, j] * (1 - beta[:, i, j + 1:i]).prod(-1)
    torch.testing.assert_close(data.weights, expected, **TOL)
    torch.testing.assert_close(data.softmax, _softmax(z, data.visible), **TOL)
    torch.testing.assert_close(data.unspent, 1 - expected.sum(-1), **TOL)
    assert bool((data.unspent[:, 0] == 1).all())  # the first query has no earlier key: the whole stick is left
    # posenc.attention spends the weights on the values, and the remainder (if any) on the query's own value
    out = _probs(probe)
    extra = torch.diag_embed(data.unspent) if remainder == "value" else torch.zeros_like(out)
    torch.testing.assert_close(out, data.weights + extra, **TOL)


def test_sinks_take_their_share_per_head():
    pe = _pe("sinks")
    with torch.no_grad():
        pe.sink_logits.copy_(torch.tensor([-2.0, 0.0, 1.0, 3.0]))
    probe = viz.attention_probe(pe, text=TEXT)
    data = viz.normalizer_data(probe)
    logits = _plain(probe).masked_fill(~data.visible, float("-inf"))  # rope's scores: q and k rotated by the probe
    share = torch.sigmoid(pe.sink_logits.double()[:, None] - logits.logsumexp(-1))  # exp(s) / (exp(s) + sum exp(l))
    torch.testing.assert_close(data.unspent, share, **TOL)
    torch.testing.assert_close(data.weights, data.softmax * (1 - share)[..., None], **TOL)
    torch.testing.assert_close(_probs(probe), data.weights, **TOL)


# -- attention maps of a trained model (the 'attention' kind) ---------------------------------------------------------
@pytest.mark.parametrize("remainder", ["value", "learned"])
def test_attention_maps_are_the_weights_without_value_terms(remainder):
    """Stick-breaking's remainder is a value term: the map shows the weights, not weights plus the remainder on the
    diagonal (one-hot values would add it there), and a learned remainder vector does not stop the map."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind="decoder", dim=32, n_heads=4, n_layers=2, max_seq_len=64,
                                          encoding="stick_breaking",
                                          encoding_options={"remainder": remainder})).eval()
    maps = viz.attention_data(model, TEXT)
    for layer in (0, 1):
        expected = viz.normalizer_data(viz.attention_probe(model, text=TEXT, layer=layer)).weights
        torch.testing.assert_close(maps[layer], expected.float())
    assert float(maps[:, :, 0].abs().max()) == 0.0  # the first query attends to nothing


# -- figures, CLI, gallery --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,name", [("gates", "data_dependent_alibi"), ("logits", "inkling"),
                                       ("disentangled", "deberta"), ("normalizer", "sinks")])
def test_probe_figures(kind, name, tmp_path):
    out = tmp_path / f"{kind}.png"
    fig = viz.plot(kind, name, out=out, text="to be or not", heads=2)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert "to be or not" in fig.get_suptitle()
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert titled and any(label.get_text() == "␣" for ax in titled for label in ax.get_xticklabels())


def test_cli_plot_probe_kinds(tmp_path, capsys):
    out = tmp_path / "fox.png"
    assert main(["plot", "gates", "fox", "--text", "hello there", "--heads-shown", "2", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    out = tmp_path / "deberta.svg"
    assert main(["plot", "disentangled", "deberta", "--heads", "2", "--dim", "32", "--option", "causal=true",
                 "--out", str(out)]) == 0
    assert "<svg" in out.read_text()
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    Transformer(TransformerConfig(kind="decoder", dim=32, n_heads=2, n_layers=2, max_seq_len=64,
                                  encoding="inkling")).save(path)
    assert main(["plot", "logits", str(path), "--layer", "1", "--text", "abc", "--out", str(out)]) == 0
    capsys.readouterr()
    for argv, message in ((["plot", "waves", "rope", "--text", "x"], "--text is only for"),
                          (["plot", "waves", "rope", "--layer", "1"], "--layer is only for the sentence kinds"),
                          (["plot", "gates", "fox", "--length", "8"], "--length does not apply to 'gates'"),
                          (["plot", "normalizer", "fox"], "cannot draw 'normalizer' for fox")):
        assert main([*argv, "--out", str(tmp_path / "x.png")]) == 1
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_gallery_draws_the_frontier_encodings(lang):
    page = render_gallery(lang=lang, names=["stick_breaking", "fox"])
    for name, kinds in (("fox", ["gates", "logits"]), ("stick_breaking", ["normalizer"])):
        section = page.split(f'id="enc-{name}"', 1)[1].split("</section>", 1)[0]
        for kind in kinds:
            assert f'alt="{kind} plot of {name}"' in section
            assert CAPTIONS[kind][lang].split("：")[0].split(":")[0] in section
        assert 'class="note"' not in section  # it has pictures now


def test_gallery_is_reproducible():
    """Encodings with random initial weights (Inkling's W_r and profiles, FoX's gate) are built from one seed per
    picture, so the page is the same each time it is generated, and the caller's random state is left alone."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = render_gallery(names=["inkling"])
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(7)
    assert render_gallery(names=["inkling"]) == first
