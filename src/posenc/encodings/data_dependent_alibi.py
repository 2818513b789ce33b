"""Data-dependent ALiBi, x-transformers' ``DataDependentAlibi`` and ``PerRowDataDependentAlibi`` (after FoX, Lin et
al., ICLR 2025, arXiv 2503.02130; no paper of their own).

**Per token** (the default, x-transformers' ``DataDependentAlibi``): FoX's decay with x-transformers' choices. Each
head has a forget gate from the layer's (normed) input, ``log f_t = s * logsigmoid(w_h . x_t + b_h)`` (``s`` is
``post_log_scale``, ``b`` starts at 5), and with ``c = cumsum(log f)``

    bias_ij = c_i - c_j = sum_{l=j+1..i} log f_l                    (key j at or before query i)
    bias_ij = c'_j - c'_i = sum_{l=i+1..j} log f'_l                 (key j after query i; bidirectional only)

where ``f'`` is a second, reversed gate set that exists only when the encoding is built for bidirectional attention
(``causal=False``; x-transformers' linear then has ``2 * heads`` outputs, the forward set first). The diagonal is 0.

**Per row** (``per_row=True``, x-transformers' ``PerRowDataDependentAlibi``, causal only): the gate of token ``l``
depends on the query too, through small projections of the layer's input ``q'_i = W_q' x_i``, ``k'_l = W_k' x_l``
(``per_row_dim`` wide per head, 8 by default):

    bias_ij = s * sum_{l=j..i-1} logsigmoid(q'_i . k'_l / sqrt(per_row_dim))          (j <= i; 0 on the diagonal)

Note the ranges: per token sums the gates after the key up to the query (``l = j+1..i``), per row the gates from
the key up to the token before the query (``l = j..i-1``), as x-transformers computes them.

x-transformers adds the bias after its own ``1 / sqrt(d)`` scaling of ``q . k`` (``sim = q k^T * scale +
attn_bias``); so does posenc (a logit term is added to the scaled scores): the same layer weights give the same
attention.

Both are attention terms (:mod:`posenc.terms`) computed per block of query rows: per token from float64 prefix sums
of every key's gates (:class:`~posenc.encodings.fox.ForgetGateTerms`, shared with FoX); per row from the block's
own ``(rows, keys)`` gates, summed backwards from each query along its row, so ``chunked`` stays ``O(rows * Tk)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc._checks import check_int, check_number
from posenc.base import PositionalEncoding, register
from posenc.encodings.fox import ForgetGateTerms, check_gate_feature, cumulative_log_gates, gate_input, prefix_dtype
from posenc.terms import AttentionCall, AttentionTerms, LayerView, ScoreBlock

__all__ = ["DataDependentALiBi", "PerRowGateTerms", "per_row_gate_bias"]


def per_row_gate_bias(gate_q: Tensor, gate_k: Tensor, q_index: Tensor, *, post_log_scale: float = 1.0) -> Tensor:
    """The per-row bias ``s * sum_{l=j..i-1} logsigmoid(q'_i . k'_l / sqrt(d'))`` of queries against keys.

    Args:
        gate_q: ``(B|1, H, rows, d')`` the queries' gate projections ``q'``.
        gate_k: ``(B|1, H, keys, d')`` the keys' gate projections ``k'``.
        q_index: int64 ``(rows,)``, the key index each query sits at; only keys before it (``l < i``) are summed.
        post_log_scale: ``s``.

    Returns:
        ``(B|1, H, rows, keys)`` in the dtype of ``gate_q``: 0 on and after the diagonal. The gates of each row are
        summed from the query backwards (a reversed cumulative sum over keys) in float64 (float32 on MPS), so the
        bias of a near key is a short sum and a far key's never cancels.
    """
    z = gate_q @ gate_k.transpose(-2, -1) * gate_q.shape[-1] ** -0.5  # (B|1, H, rows, keys)
    g = F.logsigmoid(z) * post_log_scale
    before = torch.arange(gate_k.shape[-2], device=z.device) < q_index[:, None]  # (rows, keys): l < i
    g = g.masked_fill(~before, 0.0).to(prefix_dtype(z.device))
    return g.flip(-1).cumsum(-1).flip(-1).to(z.dtype)  # entry j: sum over l >= j (and l < i)


class PerRowGateTerms(AttentionTerms):
    """The per-row logit term of one call; see :func:`per_row_gate_bias`."""

    # the gate logits, their log-sigmoid, the masked float64 copy, two flips and the cumulative sum, plus the scores,
    # the sum and the probabilities; the backward pass recomputes them
    pair_tensors = 14
    call_tensors = ("gate_q", "gate_k")

    def __init__(self, gate_q: Tensor, gate_k: Tensor, *, post_log_scale: float) -> None:
        self.gate_q = gate_q  # (B|1, H, Tq, d')
        self.gate_k = gate_k  # (B|1, H, Tk, d')
        self.post_log_scale = post_log_scale

    def logits(self, scores: Tensor, blk: ScoreBlock) -> Tensor:
        gate_q = blk.query_rows(self.gate_q).to(scores.dtype)  # (B|1, H, rows, d')
        gate_k = blk.key_rows(self.gate_k).to(scores.dtype)  # (B|1, H, keys, d')
        return scores + per_row_gate_bias(gate_q, gate_k, blk.q_index, post_log_scale=self.post_log_scale)


@register("data_dependent_alibi")
class DataDependentALiBi(PositionalEncoding):
    """Data-dependent ALiBi (x-transformers' ``DataDependentAlibi``, after FoX, arXiv 2503.02130): ``+ c_i - c_j``.

    FoX's forget-gate decay with x-transformers' conventions (formulas in the module docstring): the gate bias starts
    at 5, the gate weight at PyTorch's ``nn.Linear`` default, the log gates are multiplied by ``post_log_scale``,
    and an encoding built for bidirectional attention (``causal=False``) has a second, reversed gate set for keys
    after the query. ``per_row=True`` is x-transformers' ``PerRowDataDependentAlibi`` (causal only).

    ``per_layer``: a model builds one instance per attention layer. Parameter names and layouts are
    x-transformers', so its weights copy over: ``gate`` is ``to_forget_gates[0]`` (``(H or 2H, dim)`` and bias,
    the forward set first); with ``per_row``, ``gate_qk`` (``(2 * H * per_row_dim, dim)``, no bias; ``q'`` rows
    first, laid out ``(qk, head, d')``).

    Shapes: ``features(x, pos, layer=...)`` takes ``x`` ``(B, T, dim)`` and returns ``{"log_f": (B, H, T, S)}``
    (``S`` = 1, or 2 when built with ``causal=False``: channel 0 forward, channel 1 reversed), or with ``per_row``
    ``{"gate_q": (B, H, T, d'), "gate_k": (B, H, T, d')}``; float32 (float64 for float64 input).

    Args:
        bias_init: initial gate bias (x-transformers: 5.0, ``f = 0.993``: attention starts almost undecayed).
            A :class:`posenc.Transformer` keeps it (its ``reset_parameters`` never touches encodings).
        post_log_scale: ``s``, multiplies the log gates (x-transformers' ``post_log_scale``, 1.0).
        per_row: x-transformers' ``PerRowDataDependentAlibi``: query-dependent gates; needs ``causal=True``.
        per_row_dim: ``d'``, the width of ``q'`` and ``k'`` per head (x-transformers: 8).

    Numerics: gates in float32 or wider (also under a bfloat16 model); per token, prefix sums and each block's
    ``c_i - c_j`` in float64 (float32 on MPS), cast to the scores' dtype last (see :class:`~posenc.encodings.fox.FoX`);
    per row, the gate logits in the scores' dtype and their sums along each row in float64.

    KV cache: the per-token features are cached (``log_f``: ``S`` floats per head and token; per row ``q'`` and
    ``k'``: ``2 d'`` floats, of which only ``k'`` is read for cached keys -- features are kept per token, like keys).
    Every call sums the gates of every key again (per token ``O(Tk * H)``; per row the block's ``(rows, Tk)``
    gates, which attention forms anyway), so a decode step gets the same bias as the full forward.
    """

    family = "contextual"
    paper = "2503.02130"
    extrapolates = True
    per_layer = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 bias_init: float = 5.0, post_log_scale: float = 1.0, per_row: bool = False,
                 per_row_dim: int = 8) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        for arg, value in (("bias_init", bias_init), ("post_log_scale", post_log_scale)):
            check_number(value, f"data_dependent_alibi: {arg}")
        if not isinstance(per_row, bool):
            raise TypeError(f"data_dependent_alibi: per_row must be True or False; got {per_row!r}.")
        check_int(per_row_dim, "data_dependent_alibi: per_row_dim (the width of the per-row gate projections per head)",
                  minimum=1, hint="x-transformers uses 8.")
        if per_row and not self.causal:
            raise ValueError("data_dependent_alibi: per_row=True (x-transformers' PerRowDataDependentAlibi) is defined "
                             "for causal attention only; build it with causal=True (a decoder), or use per_row=False "
                             "for an encoder (a second, reversed gate set for keys after the query).")
        self.bias_init = float(bias_init)
        self.post_log_scale = float(post_log_scale)
        self.per_row = per_row
        self.per_row_dim = per_row_dim
        if per_row:
            self.gate_qk = nn.Linear(dim, 2 * n_heads * per_row_dim, bias=False)  # (q' | k') x (H, d')
        else:
            self.gate = nn.Linear(dim, n_heads * (1 if self.causal else 2))  # (forward | reversed) x H
            nn.init.constant_(self.gate.bias, self.bias_init)

    @property
    def bidirectional(self) -> bool:
        """Whether the encoding has the reversed gate set (built with ``causal=False``) for bidirectional calls."""
        return not self.per_row and not self.causal

    def features(self, x: Tensor, pos: Tensor, *, layer: LayerView) -> dict[str, Tensor]:
        """The per-token gates of ``x`` ``(B, T, dim)`` (see the class docstring); ``pos`` and ``layer`` not read."""
        x = gate_input(x, self.name, self.dim)
        b, t, _ = x.shape
        if self.per_row:
            qk = F.linear(x, self.gate_qk.weight.to(x.dtype))  # (B, T, 2 * H * d')
            qk = qk.view(b, t, 2, self.n_heads, self.per_row_dim).permute(2, 0, 3, 1, 4)  # (2, B, H, T, d')
            return {"gate_q": qk[0], "gate_k": qk[1]}
        logit = F.linear(x, self.gate.weight.to(x.dtype), self.gate.bias.to(x.dtype))  # (B, T, S * H)
        log_f = F.logsigmoid(logit) * self.post_log_scale
        sets = self.gate.out_features // self.n_heads
        return {"log_f": log_f.view(b, t, sets, self.n_heads).permute(0, 3, 1, 2)}  # (B, T, S, H) -> (B, H, T, S)

    def terms(self, call: AttentionCall) -> AttentionTerms:
        """The gate decay of every key for the call's queries.

        Args:
            call: ``q`` ``(B, H, Tq, D)``, ``k`` ``(B, Hkv, Tk, D)``, and every key's features (``log_f``
                ``(B|1, H|1, Tk, S)``, or ``gate_q``/``gate_k`` ``(B|1, H|1, Tk, d')``); positions and scale are
                not read. A bidirectional call needs an encoding built with ``causal=False`` (and ``per_row=False``).
        """
        if not call.causal and not self.bidirectional:
            how = ("per_row=True is causal only" if self.per_row else
                   "it has no reversed gate set for keys after the query; build it with causal=False to get one")
            raise ValueError(f"data_dependent_alibi: this encoding was built for causal attention but is called for "
                             f"bidirectional attention: {how}.")
        if self.per_row:
            gate_q = check_gate_feature(self, call, "gate_q", self.per_row_dim)
            gate_k = check_gate_feature(self, call, "gate_k", self.per_row_dim)
            return PerRowGateTerms(gate_q[:, :, gate_q.shape[2] - call.q.shape[2]:], gate_k,
                                   post_log_scale=self.post_log_scale)
        log_f = check_gate_feature(self, call, "log_f", 1 if self.causal else 2)
        c = cumulative_log_gates(log_f)  # (B|1, H|1, Tk, S) float64
        return ForgetGateTerms(c[:, :, c.shape[2] - call.q.shape[2]:], c, bidirectional=not call.causal)

    def extra_repr(self) -> str:
        if self.per_row:
            variant = f"per_row=True, per_row_dim={self.per_row_dim}"
        else:
            variant = f"bidirectional={self.bidirectional}, bias_init={self.bias_init}"
        return f"{super().extra_repr()}, {variant}, post_log_scale={self.post_log_scale}"
