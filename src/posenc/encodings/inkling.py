"""Inkling's relative-logit bias: a per-token, per-head mix of learned bias-vs-distance profiles (Thinking Machines).

Inkling (Thinking Machines, 2026; no paper: Hugging Face transformers ``models/inkling/modeling_inkling.py``,
``InklingRelativeLogits``; x-transformers ``RelativeProjPositionalBias``) adds to every logit a relative bias that
the *query token* chooses. Each layer holds a bank of ``d_rel`` learned profiles over backward distances,
``P`` ``(d_rel, rel_extent)``, shared by its heads; each token projects its (normed) layer input to per-head mixing
weights ``r_i = W_r x_i`` ``(H, d_rel)``, and for query ``i`` and key ``j``::

    bias_ij = (r_i . P)[i - j]      for 0 <= i - j < rel_extent        (one head; positions, not indices)
    bias_ij = 0                     otherwise (future keys, and keys rel_extent or more back)

``(r_i . P)`` is the query's own bias-vs-distance curve, ``(rel_extent,)`` per head. Beyond ``rel_extent`` the bias
is 0, not a mask: far keys stay visible, with no positional preference.

Log-scaling (Inkling's full-attention layers, ``log_scaling_n_floor`` set): the query and its bias are multiplied by
``tau_i = 1 + alpha * log(max((pos_i + 1) / n_floor, 1))``, so ``logit_ij = tau_i * (q_i . k_j * scale + bias_ij)``:
attention sharpens logarithmically past ``n_floor`` tokens. Inkling's sliding-window layers have the bias (with
``rel_extent`` = the window) but no log-scaling; in :class:`posenc.Transformer` give such layers their own options
through ``TransformerConfig.layer_encodings``. Positions are whatever the caller passes (Inkling passes cache
positions, ``arange`` plus the cache's offset, so pad tokens of a left-padded row count as distance there too).

The model around the bias in Inkling (not part of this encoding): q and k are RMS-normalised per head and the
softmax scale is ``1 / head_dim`` rather than ``1 / sqrt(head_dim)`` (so ``q . k * scale`` lies in ``[-1, 1]`` up to
the norms' weights); pass ``scale=1 / head_dim`` to :func:`posenc.attention` to match. The bias is added after that
scale, unscaled. :class:`posenc.Transformer` has no QK-norm, so there the bias meets ``q . k / sqrt(d)`` logits of
unit-ish variance instead.

It is an attention term (:mod:`posenc.terms`): the features hook computes ``r`` from the layer's input; each block of
query rows forms its queries' curves ``r @ P`` ``(B, H, rows, rel_extent)`` and gathers them by distance, so nothing
``(Tq, Tk, d_rel)``-sized exists and ``chunked`` stays ``O(rows * max(Tk, rel_extent))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc._checks import check_int, check_number
from posenc.base import PositionalEncoding, register
from posenc.terms import AttentionCall, AttentionTerms, LayerView, ScoreBlock, compute_dtype, positions_2d

__all__ = ["InklingRelativeBias", "inkling_log_scale", "inkling_relative_bias"]


def inkling_log_scale(pos: Tensor, *, n_floor: int, alpha: float) -> Tensor:
    """``tau = 1 + alpha * log(max((pos + 1) / n_floor, 1))`` in float64 (float32 on MPS), the shape of ``pos``.

    float64 keeps ``pos + 1`` exact for any position a model meets (float32 rounds integers past ``2**24``), and the
    result is cast to the logits' dtype by the caller (Inkling computes it in float32: the two agree to float32
    rounding, relative ``~1e-7``).
    """
    wide = torch.float32 if pos.device.type == "mps" else torch.float64  # MPS has no float64
    ratio = (pos.to(wide) + 1.0) / n_floor
    return 1.0 + alpha * torch.log(ratio.clamp(min=1.0))


def inkling_relative_bias(r: Tensor, profiles: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """``(r_i . P)[i - j]`` where ``0 <= q_pos_i - k_pos_j < rel_extent``, else 0.

    Args:
        r: ``(B|1, H|1, Tq, d_rel)`` the queries' relative states ``W_r x_i``.
        profiles: ``(d_rel, rel_extent)`` the layer's bank of bias-vs-distance profiles ``P``.
        q_pos: int ``(Tq,)`` or ``(B, Tq)`` query positions.
        k_pos: int ``(Tk,)`` or ``(B, Tk)`` key positions.

    Returns:
        ``(B|1, H|1, Tq, Tk)`` in the dtype of ``r @ profiles``.
    """
    extent = profiles.shape[-1]
    curves = r @ profiles  # (B|1, H|1, Tq, rel_extent): each query's bias by backward distance
    dist = positions_2d(q_pos)[:, :, None] - positions_2d(k_pos)[:, None, :]  # (B|1, Tq, Tk)  i - j
    dist = dist[:, None].long()  # (B|1, 1, Tq, Tk)
    (batch,) = torch.broadcast_shapes(curves.shape[:1], dist.shape[:1])  # B, or 1 when both are shared
    heads = curves.shape[1]
    index = dist.clamp(0, extent - 1).expand(batch, heads, -1, -1)  # (B, H, Tq, Tk)
    bias = curves.expand(batch, heads, -1, -1).gather(-1, index)
    # zero, not masked: a key past rel_extent is still seen, only without a bias (future keys: the mask's business)
    return bias.masked_fill((dist < 0) | (dist >= extent), 0.0)


@register("inkling")
class InklingRelativeBias(PositionalEncoding):
    """Inkling's relative-logit bias (Thinking Machines; no arXiv paper): ``bias_ij = (W_r x_i . P)[i - j]``.

    Per layer (``per_layer = True``: a :class:`posenc.Transformer` builds one per attention layer, as Inkling has
    its own ``W_r`` and ``P`` in each): ``r_i`` ``(H, d_rel)`` from the layer's normed input mixes the layer's
    profiles ``P`` ``(d_rel, rel_extent)`` (shared by its heads) into one bias per backward distance; the bias is 0
    for ``i - j`` outside ``[0, rel_extent)``. With ``log_scaling_n_floor`` the logits of query ``i`` (its
    ``q . k`` and its bias) are multiplied by ``tau_i = 1 + alpha * log(max((pos_i + 1) / n_floor, 1))``. See the
    module docstring for the formula and how Inkling's QK-norm and ``1/d`` scale sit around it.

    Args:
        d_rel: width of the per-head relative states ``r`` (Inkling: 16).
        rel_extent: backward distances with a bias (Inkling: 1024 in full layers, the sliding window in the others).
            ``None`` (the default): ``min(1024, max_seq_len)``, because a profile entry for a distance no training
            sequence reaches keeps its random initial value, which would add noise past the training length; zero
            bias there is the better guess.
        log_scaling_n_floor: position from which the logits grow logarithmically; ``None`` (the default) disables
            the log-scaling (Inkling's sliding layers, and its config's default).
        log_scaling_alpha: the strength ``alpha`` of the log-scaling (Inkling: 0.1); finite and ``>= 0``.
        r_bias: give ``W_r`` a bias, as x-transformers' ``RelativeProjPositionalBias`` does (Inkling has none).
        init_std: normal initialisation of ``P`` (0.02 as Inkling and x-transformers); ``W_r`` starts at
            ``N(0, 1/dim)`` like the model's own projections.

    Features: ``{"r": (B, H, T, d_rel)}`` from :meth:`features`, cached by a model beside k and v; only the
    queries' entries are read (the keys' are kept because the cache keeps every feature of every key).

    Shapes: ``q`` ``(B, H, Tq, D)``, ``k``/``v`` ``(B, Hkv, Tk, D)``, positions ``(T,)`` or ``(B, T)``. Parameters:
    ``r_proj.weight`` ``(H * d_rel, dim)`` (and ``r_proj.bias``), ``profiles`` ``(d_rel, rel_extent)``.

    Limits: the bias reads only relative distances (``i - j`` of positions), so it is the same at any offset; the
    log-scaling reads absolute query positions, in float64 (exact for positions below ``2**53``), cast to the
    compute dtype (float32, or float64 for float64 input). Bidirectional attention is allowed and, as in
    x-transformers, gives keys after the query no bias (the profiles are one-sided). KV cache: ``r`` of every token
    is cached (``H * d_rel`` per token), the bias needs nothing else, so decoding equals the full forward.
    """

    family = "contextual"
    paper = None  # Inkling has no paper; the reference is HF transformers' models/inkling
    extrapolates = True
    per_layer = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False, d_rel: int = 16,
                 rel_extent: int | None = None, log_scaling_n_floor: int | None = None, log_scaling_alpha: float = 0.1,
                 r_bias: bool = False, init_std: float = 0.02) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if rel_extent is None:
            rel_extent = min(1024, max_seq_len)
        for arg, value, hint in (("d_rel", d_rel, "Inkling uses 16"),
                                 ("rel_extent", rel_extent, "Inkling uses 1024 in its full-attention layers")):
            check_int(value, f"inkling: {arg}", minimum=1, hint=f"{hint}.")
        if log_scaling_n_floor is not None:
            check_int(log_scaling_n_floor, "inkling: log_scaling_n_floor", minimum=1,
                      hint="It is the position from which logits grow; None means no log-scaling.")
        check_number(log_scaling_alpha, "inkling: log_scaling_alpha", minimum=0,
                     hint="Inkling: 0.1. A negative alpha would turn tau negative at far positions.")
        if not isinstance(r_bias, bool):
            raise TypeError(f"inkling: r_bias must be True or False; got {type(r_bias).__name__} {r_bias!r}.")
        check_number(init_std, "inkling: init_std", minimum=0)
        self.d_rel = d_rel
        self.rel_extent = rel_extent
        self.log_scaling_n_floor = log_scaling_n_floor
        self.log_scaling_alpha = float(log_scaling_alpha)
        self.r_proj = nn.Linear(dim, n_heads * d_rel, bias=r_bias)  # W_r: (H * d_rel, dim)
        nn.init.normal_(self.r_proj.weight, std=dim**-0.5)
        if r_bias:
            nn.init.zeros_(self.r_proj.bias)
        self.profiles = nn.Parameter(torch.randn(d_rel, rel_extent) * init_std)  # (d_rel, rel_extent) P

    @property
    def log_scaling(self) -> bool:
        return self.log_scaling_n_floor is not None

    def features(self, x: Tensor, pos: Tensor, *, layer: LayerView) -> dict[str, Tensor]:
        """``{"r": W_r x}`` ``(B, H, T, d_rel)`` from the layer's normed input ``x`` ``(B, T, dim)``."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"inkling: features need the layer input x of shape (B, T, dim={self.dim}); got {got}.")
        if layer is not None and layer.n_heads != self.n_heads:
            raise ValueError(f"inkling: built for n_heads={self.n_heads} but the layer has {layer.n_heads} heads.")
        b, t, _ = x.shape
        # the wider of x's and W_r's dtypes, so a float32 encoding serves bfloat16 activations (and vice versa)
        dtype = torch.promote_types(x.dtype, self.r_proj.weight.dtype)
        w, bias = self.r_proj.weight, self.r_proj.bias
        r = F.linear(x.to(dtype), w.to(dtype), None if bias is None else bias.to(dtype))  # (B, T, H * d_rel)
        return {"r": r.view(b, t, self.n_heads, self.d_rel).transpose(1, 2)}  # (B, H, T, d_rel)

    def terms(self, call: AttentionCall) -> InklingTerms:
        """The bias ``(r_i . P)[i - j]`` (and ``tau_i``) for one call, from the queries' features ``r``.

        ``call.features["r"]`` ``(B|1, H|1, Tk, d_rel)`` holds every key's relative states (a model's cached ones
        first); the queries' own are its last ``Tq`` entries.
        """
        r = call.query_features("r")  # (B|1, H|1, Tq, d_rel); KeyError naming the hook when missing
        if r.shape[1] not in (1, self.n_heads) or r.shape[-1] != self.d_rel:
            raise ValueError(f"inkling: features['r'] must have shape (B|1, H={self.n_heads} (or 1), Tk, "
                             f"d_rel={self.d_rel}); got {tuple(call.features['r'].shape)}. The features() hook "
                             f"makes it from the layer's input.")
        return InklingTerms(self, r.to(compute_dtype(call.q)), keys=call.k.shape[-2])

    def extra_repr(self) -> str:
        text = f"{super().extra_repr()}, d_rel={self.d_rel}, rel_extent={self.rel_extent}"
        if self.log_scaling:
            text += f", log_scaling_n_floor={self.log_scaling_n_floor}, log_scaling_alpha={self.log_scaling_alpha}"
        return text


class InklingTerms(AttentionTerms):
    """Inkling's bias (and log-scaling) for one call: ``logits = tau_i * (scores + (r_i . P)[i - j])``."""

    call_tensors = ("r_q",)  # the queries' relative states, from the layer's input through W_r

    def __init__(self, pe: InklingRelativeBias, r_q: Tensor, *, keys: int) -> None:
        self.pe = pe
        self.r_q = r_q  # (B|1, H|1, Tq, d_rel) in the compute dtype
        # Per block: scores, bias, logits, probabilities, an int64 index (2) and their gradients; plus the queries'
        # curves r @ P and their gradient, (rows, rel_extent) each, which outgrow a score block when Tk < rel_extent.
        self.pair_tensors = 8 + 2 * math.ceil(pe.rel_extent / max(1, keys))

    def logits(self, scores: Tensor, blk: ScoreBlock) -> Tensor:
        r = blk.query_rows(self.r_q)  # (B|1, H|1, rows, d_rel)
        bias = inkling_relative_bias(r, self.pe.profiles.to(scores.dtype), blk.q_pos, blk.k_pos)  # (B, H, rows, keys)
        logits = scores + bias
        if self.pe.log_scaling:
            tau = inkling_log_scale(positions_2d(blk.q_pos), n_floor=self.pe.log_scaling_n_floor,
                                    alpha=self.pe.log_scaling_alpha)  # (B|1, rows)
            logits = logits * tau[:, None, :, None].to(logits.dtype)  # tau_i (q_i . k_j * scale + bias_ij)
        return logits
