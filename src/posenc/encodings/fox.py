"""The Forgetting Transformer's forget gate, FoX (Lin et al., ICLR 2025, arXiv 2503.02130).

Every attention layer gets a per-head scalar forget gate computed from its (normed) input,
``f_t = sigmoid(w_h . x_t + b_h)``, and the logit of query ``i`` and key ``j <= i`` decays by the gates of the
tokens after the key, up to and including the query:

    s_ij = q_i . k_j * scale  +  sum_{l=j+1..i} log f_l  =  q_i . k_j * scale  +  c_i - c_j,    c = cumsum(log f)

(the decay is added after the ``1 / sqrt(d)`` scaling, unscaled). The gate is data-dependent ALiBi: a constant
gate ``f = exp(-m_h)`` gives ``-m_h (i - j)``, causal ALiBi with slope ``m_h``, exactly.

The sums count tokens, not positions: ``i`` and ``j`` are indices in the key sequence (bottom-right aligned, as
everywhere in :mod:`posenc.backends`), and the positions are never read. So the encoding is translation invariant,
defined at any position, and a packed batch needs nothing special: a query only sees keys of its own document,
and the gates between them are its document's.

Computed as an attention term (:mod:`posenc.terms`): the per-token log gates are a feature (``features``, cached
by a model beside k and v); per call, ``terms`` forms the float64 prefix sums ``c`` of every key's log gates once
(``O(Tk)``), and each block of query rows adds ``c_i - c_j`` for its rows and keys, so ``chunked`` stays
``O(rows * Tk)``, forward and backward. :func:`forget_gate_bias` gives the dense ``(B, H, Tq, Tk)`` decay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc._checks import check_number
from posenc.base import PositionalEncoding, register
from posenc.terms import AttentionCall, AttentionTerms, LayerView, ScoreBlock

__all__ = ["FoX", "ForgetGateTerms", "check_gate_feature", "cumulative_log_gates", "forget_gate_bias",
           "gate_input", "prefix_dtype"]


def prefix_dtype(device: torch.device) -> torch.dtype:
    """The dtype prefix sums of log gates are formed in: float64 (float32 on MPS, which has no float64).

    At ``10^6`` tokens of ``|log f| <= 1`` the sums reach ``10^6``: float64 keeps their differences to about
    ``1e-10``, float32 (ulp 0.06 there) would not.
    """
    return torch.float32 if device.type == "mps" else torch.float64


def cumulative_log_gates(log_f: Tensor) -> Tensor:
    """Prefix sums ``c_t = sum_{l <= t} log f_l`` over the time axis (dim 2), in :func:`prefix_dtype`.

    Args:
        log_f: ``(B|1, H|1, T, X)`` per-token log gates (any float dtype).

    Returns:
        ``(B|1, H|1, T, X)`` in float64 (float32 on MPS).
    """
    return torch.cumsum(log_f.to(prefix_dtype(log_f.device)), dim=2)


def gate_input(x: Tensor, name: str, dim: int) -> Tensor:
    """``x`` ``(B, T, dim)`` in the dtype gates are computed in: float32, or float64 for float64 input.

    The gate's projection and log-sigmoid run in float32 or wider even when the model runs in bfloat16: a bf16
    gate logit of 5 is only good to 0.03, and the decay sums thousands of them.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{name}: features() takes the layer's input x as a float tensor (B, T, dim); got "
                        f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}.")
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name}: features() takes the layer's input x of shape (B, T, dim={dim}); got shape "
                         f"{tuple(x.shape)}.")
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_gate_feature(pe: PositionalEncoding, call: AttentionCall, feature: str, channels: int) -> Tensor:
    """``call.features[feature]`` after checking it is a float ``(B|1, H|1, Tk, channels)`` tensor.

    Raises ``KeyError`` when the call has no such feature (a bare :func:`posenc.attention` call must pass
    ``features=pe.features(x, pos, layer=...)``) and ``ValueError``/``TypeError`` for a wrong shape or dtype.
    """
    if feature not in call.features:
        raise KeyError(f"{pe.name}: no feature {feature!r} in this call (it has {sorted(call.features)}); the "
                       f"encoding's features() hook makes it from the layer's input, and a bare posenc.attention "
                       f"call passes features=pe.features(x, pos, layer=...).")
    f = call.features[feature]
    heads, keys = call.q.shape[1], call.k.shape[2]
    if not f.is_floating_point():
        raise TypeError(f"{pe.name}: features[{feature!r}] must be a float tensor; got dtype {f.dtype}.")
    if f.dim() != 4 or f.shape[1] not in (1, heads) or f.shape[2] != keys or f.shape[3] != channels:
        raise ValueError(f"{pe.name}: features[{feature!r}] must have shape (B|1, H|1, Tk, {channels}) with H={heads} "
                         f"query heads and Tk={keys} keys; got {tuple(f.shape)}.")
    return f


def forget_gate_bias(log_f: Tensor, *, q_len: int | None = None, bidirectional: bool = False) -> Tensor:
    """The dense decay ``(B|1, H|1, Tq, Tk)`` of per-token log gates (what :class:`ForgetGateTerms` adds).

    Query row ``i`` sits at key index ``Tk - Tq + i``. Below and on the diagonal (``j <= i``) the decay is
    ``sum_{l=j+1..i} log f_l`` with channel 0 of ``log_f``; above it (``j > i``, only when ``bidirectional``)
    ``sum_{l=i+1..j} log f'_l`` with the last channel (FoX's own gates again, or data-dependent ALiBi's reversed
    set); without ``bidirectional`` the entries above the diagonal are ``c_i - c_j`` too (positive; a causal mask
    hides them).

    Args:
        log_f: ``(B|1, H|1, Tk, X)`` per-token log gates, ``X`` 1 or 2.
        q_len: number of queries (the last ``q_len`` keys); default all ``Tk``.
        bidirectional: use the last channel above the diagonal.

    Returns:
        ``(B|1, H|1, Tq, Tk)`` in float64 (float32 on MPS).
    """
    tk = log_f.shape[2]
    tq = tk if q_len is None else q_len
    c = cumulative_log_gates(log_f)
    q_index = torch.arange(tk - tq, tk, device=log_f.device)
    return _decay(c[:, :, tk - tq:], c.transpose(-2, -1), q_index, bidirectional=bidirectional)


def _decay(c_q: Tensor, c_k_t: Tensor, q_index: Tensor, *, bidirectional: bool) -> Tensor:
    """``c_i - c_j`` (and ``c'_j - c'_i`` above the diagonal) from query prefix sums ``(..., rows, X)`` and key
    prefix sums transposed ``(..., X, keys)``; ``q_index`` ``(rows,)`` is each row's key index."""
    decay = c_q[..., :1] - c_k_t[..., :1, :]  # (B|1, H|1, rows, keys): sum_{l=j+1..i} log f_l
    if bidirectional:
        upper = c_k_t[..., -1:, :] - c_q[..., -1:]  # sum_{l=i+1..j} log f'_l
        after = torch.arange(c_k_t.shape[-1], device=c_q.device) > q_index[:, None]  # (rows, keys)
        decay = torch.where(after, upper, decay)
    return decay


class ForgetGateTerms(AttentionTerms):
    """The logit term ``c_i - c_j`` of one call (FoX, data-dependent ALiBi); see :func:`forget_gate_bias`.

    ``c_q`` are the queries' prefix sums (the last ``Tq`` of ``c_k``); both are float64 and carry the gradient of the
    gates. The difference is formed in float64 per block and only then cast to the scores' dtype, so it keeps
    float64's precision at any distance.
    """

    # scores, the float64 difference (two), its cast, the sum, probabilities and their gradients
    pair_tensors = 8
    call_tensors = ("c_q", "c_k")

    def __init__(self, c_q: Tensor, c_k: Tensor, *, bidirectional: bool) -> None:
        self.c_q = c_q  # (B|1, H|1, Tq, X) float64
        self.c_k = c_k  # (B|1, H|1, Tk, X) float64
        self.bidirectional = bidirectional

    def logits(self, scores: Tensor, blk: ScoreBlock) -> Tensor:
        c_q = blk.query_rows(self.c_q)  # (B|1, H, rows, X)
        c_k = blk.key_rows(self.c_k).transpose(-2, -1)  # (B|1, H, X, keys)
        return scores + _decay(c_q, c_k, blk.q_index, bidirectional=self.bidirectional).to(scores.dtype)


@register("fox")
class FoX(PositionalEncoding):
    """Forgetting Transformer forget gate (Lin et al., ICLR 2025, arXiv 2503.02130): logits ``+ c_i - c_j``.

    Per layer and head, ``log f_t = logsigmoid(w_h . x_t + b_h)`` from the layer's normed input ``x``, ``c`` its
    cumulative sum over tokens, and the logit of query ``i`` and key ``j <= i`` gets ``c_i - c_j =
    sum_{l=j+1..i} log f_l`` (added after the ``1 / sqrt(d)`` scaling). It needs no other position encoding (the
    paper's code defaults to ``use_rope=False``).

    ``per_layer``: a model builds one instance per attention layer, each with its own gate.

    Shapes: ``features(x, pos, layer=...)`` takes ``x`` ``(B, T, dim)`` and returns ``{"log_f": (B, H, T, 1)}`` in
    float32 (float64 for float64 input); ``terms`` reads every key's ``log_f`` ``(B|1, H|1, Tk, 1)``.

    Formula:
        $$
        \\log f_t = \\log\\sigma(w_h^\\top x_t + b_h),\\quad
        c_i = \\sum_{l \\le i} \\log f_l,\\quad
        \\mathrm{logit}_{ij} = \\frac{q_i^\\top k_j}{\\sqrt{d}} + c_i - c_j
        $$

    Args:
        gate_bias_init: initial gate bias ``b_h``. The paper's code (``zhixuan-lin/forgetting-transformer``,
            ``fgate_type="full"``) starts it at 0 (``f = 1/2``: a strong initial locality the model learns away);
            x-transformers' ``DataDependentAlibi`` starts at 5 (``f = 0.993``).
        gate_init_std: std of the normal initialisation of ``w`` (the paper's code: ``initializer_range`` 0.02).
            A :class:`posenc.Transformer` keeps both (its ``reset_parameters`` never touches encodings).
        bidirectional: our extension for encoders (the paper defines FoX for decoders): keys after the query decay
            by the same gates, ``sum_{l=i+1..j} log f_l``, so the decay is ``-|c_i - c_j|`` and a constant gate is
            symmetric ALiBi. Defaults to ``not causal``; with ``False`` a bidirectional call raises.

    Numerics: the gate's projection and log-sigmoid in float32 or wider (also under a bfloat16 model); the prefix sums
    ``c`` and each block's ``c_i - c_j`` in float64 (float32 on MPS), cast to the scores' dtype last. At ``10^6``
    tokens ``|c|`` may reach ``10^6``: float64 keeps the decay to ~1e-10, float32 sums would lose ~0.06.

    KV cache: the per-token ``log_f`` is cached (a float32 per head and token), and every call sums every key's
    gates again (``O(Tk * H)``, small beside attention's ``O(Tk * H * D)``). The running sum is not cached:
    ``features`` sees only the new tokens, so it cannot continue a sum, and re-summing the same float32 gates in
    float64 gives a decode step the same decay as the full forward.

    Not included: FoX (Pro)'s output gate, QK-norm and key/value shift (changes of the layer, not of attention's
    logits), and the paper's data-independent / fixed gate ablations.
    """

    family = "contextual"
    paper = "2503.02130"
    extrapolates = True
    per_layer = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 gate_bias_init: float = 0.0, gate_init_std: float = 0.02, bidirectional: bool | None = None) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        for arg, value in (("gate_bias_init", gate_bias_init), ("gate_init_std", gate_init_std)):
            check_number(value, f"fox: {arg}")
        if gate_init_std < 0:
            raise ValueError(f"fox: gate_init_std must be >= 0; got {gate_init_std}.")
        if bidirectional is not None and not isinstance(bidirectional, bool):
            raise TypeError(f"fox: bidirectional must be True, False or None (= not causal); got {bidirectional!r}.")
        self.bidirectional = (not self.causal) if bidirectional is None else bidirectional
        self.gate_bias_init = float(gate_bias_init)
        self.gate = nn.Linear(dim, n_heads)  # w (H, dim), b (H,)
        nn.init.normal_(self.gate.weight, std=float(gate_init_std))
        nn.init.constant_(self.gate.bias, float(gate_bias_init))

    def features(self, x: Tensor, pos: Tensor, *, layer: LayerView) -> dict[str, Tensor]:
        """``{"log_f": (B, H, T, 1)}``: ``logsigmoid(w . x_t + b)`` per head, in float32 (float64 for float64 x).

        Args:
            x: ``(B, T, dim)``, the layer's normed input.
            pos: positions ``(T,)`` or ``(B, T)``; not read (the decay counts tokens).
            layer: the layer served; not read.
        """
        x = gate_input(x, self.name, self.dim)
        logit = F.linear(x, self.gate.weight.to(x.dtype), self.gate.bias.to(x.dtype))  # (B, T, H)
        return {"log_f": F.logsigmoid(logit).transpose(1, 2).unsqueeze(-1)}  # (B, T, H) -> (B, H, T, 1)

    def terms(self, call: AttentionCall) -> ForgetGateTerms:
        """The decay ``c_i - c_j`` from every key's ``log_f`` (``-|c_i - c_j|`` for a bidirectional call).

        Args:
            call: ``q`` ``(B, H, Tq, D)``, ``k`` ``(B, Hkv, Tk, D)``, ``features["log_f"]`` ``(B|1, H|1, Tk, 1)``;
                positions and scale are not read. A bidirectional call needs ``bidirectional=True``.
        """
        if not call.causal and not self.bidirectional:
            raise ValueError("fox: this encoding was built for causal attention (the paper's decoder FoX, "
                             "bidirectional=False) but is called for bidirectional attention; build it with "
                             "causal=False or bidirectional=True to let keys after the query decay by the same gates.")
        log_f = check_gate_feature(self, call, "log_f", 1)
        c = cumulative_log_gates(log_f)  # (B|1, H|1, Tk, 1) float64
        return ForgetGateTerms(c[:, :, c.shape[2] - call.q.shape[2]:], c, bidirectional=not call.causal)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bidirectional={self.bidirectional}, gate_bias_init={self.gate_bias_init}"
