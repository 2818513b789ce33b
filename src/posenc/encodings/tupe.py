"""Untied positional encoding, TUPE (Ke et al. 2021, arXiv 2006.15595), without a T x T positional tensor.

TUPE does not add position embeddings to the tokens. Each head instead adds a positional correlation, computed from
learned absolute embeddings ``p`` with their own projections, to the content logit:

    a_ij = (q_i . k_j) / sqrt(2d)  +  (p_i U_Q)(p_j U_K)^T / sqrt(2d)

with ``d`` the head dim (the ``sqrt(2d)`` keeps the sum of two terms at unit variance). Because the second term is
a dot product too, it rides along as extra channels:

    q' = [q, p_{q_pos} U_Q],   k' = [k, p_{k_pos} U_K],   v unchanged,   a_ij = q'_i . k'_j / sqrt(2d)

so :meth:`TUPE.attend` is one SDPA call (flash / memory-efficient kernels included) with ``2d``-wide queries and
keys: ``O(T)`` extra memory, never ``(H, T, T)``.

Choices, following the authors' code: ``p`` is layer-normalised before the projections (``pos_ln`` there), and one
positional correlation serves every layer (in :class:`posenc.Transformer` every layer shares the encoding, hence
``p``, ``U_Q``, ``U_K``). Left out: the paper's special treatment of ``[CLS]`` (untying it from positions; there is
no ``[CLS]`` token here) and TUPE-R's additional T5 relative bucket bias (this is TUPE-A; combine with a relative
bias encoding if you need it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.base import PositionalEncoding, check_positions, register
from posenc.encodings._attend_utils import additive_mask, check_attend_inputs, expand_kv

__all__ = ["TUPE", "tupe_position_channels"]


def tupe_position_channels(pos: Tensor, table: Tensor, proj: Tensor, *, n_heads: int,
                           ln_weight: Tensor | None = None, ln_bias: Tensor | None = None) -> Tensor:
    """``LN(p_pos) U`` split into heads: the extra query or key channels of TUPE.

    Args:
        pos: int64 ``(T,)`` or ``(B, T)`` positions (rows of ``table``).
        table: ``(L, dim)`` learned absolute position embeddings ``p``.
        proj: ``(n_heads * D, dim)`` projection (``U_Q`` or ``U_K``, stored like ``nn.Linear.weight``).
        n_heads: heads to split into.
        ln_weight, ln_bias: ``(dim,)`` layer-norm affine parameters; ``None`` for both skips the layer norm.

    Returns:
        ``(1, H, T, D)`` or ``(B, H, T, D)`` in the dtype of ``table``.
    """
    p = F.embedding(pos, table)  # (T, dim) or (B, T, dim)
    if ln_weight is not None:
        p = F.layer_norm(p, (table.shape[-1],), ln_weight, ln_bias)
    x = p @ proj.t()  # (..., T, H*D)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    b, t, width = x.shape
    return x.view(b, t, n_heads, width // n_heads).transpose(1, 2)  # (B|1, T, H*D) -> (B|1, H, T, D)


@register("tupe")
class TUPE(PositionalEncoding):
    """Untied positional attention, TUPE-A (Ke et al. 2021, arXiv 2006.15595): ``(p_i U_Q)(p_j U_K)^T / sqrt(2d)``.

    Implemented in :meth:`attend` as one SDPA call over ``[q, p U_Q]`` and ``[k, p U_K]`` (see the module
    docstring); positions are rows of a learned table of ``max_seq_len`` rows, so positions past it raise
    (``extrapolates = False``).

    Args:
        layer_norm: layer-normalise ``p`` before the projections, as the authors' code does.
        init_std: normal initialisation of the table ``p`` (0.02 as BERT); ``U_Q``/``U_K`` start at ``dim ** -0.5``
            so the positional term starts on the scale of the content term.

    Parameters: ``table`` ``(max_seq_len, dim)``, ``u_q``/``u_k`` ``(H*D, dim)``, and with ``layer_norm`` the
    affine ``ln_weight``/``ln_bias`` ``(dim,)``.
    """

    family = "absolute"
    paper = "2006.15595"
    extrapolates = False

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 layer_norm: bool = True, init_std: float = 0.02) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if not isinstance(layer_norm, bool):
            raise TypeError(f"tupe: layer_norm must be True or False; got {type(layer_norm).__name__} "
                            f"{layer_norm!r}.")
        if not (isinstance(init_std, (int, float)) and math.isfinite(init_std) and init_std >= 0):
            raise ValueError(f"tupe: init_std must be a finite number >= 0; got {init_std!r}.")
        self.table = nn.Parameter(torch.randn(max_seq_len, dim) * init_std)  # (L, dim) p
        self.u_q = nn.Parameter(torch.randn(n_heads * self.head_dim, dim) * dim**-0.5)  # (H*D, dim) U_Q
        self.u_k = nn.Parameter(torch.randn(n_heads * self.head_dim, dim) * dim**-0.5)  # (H*D, dim) U_K
        self.ln_weight = nn.Parameter(torch.ones(dim)) if layer_norm else None
        self.ln_bias = nn.Parameter(torch.zeros(dim)) if layer_norm else None

    @property
    def layer_norm(self) -> bool:
        return self.ln_weight is not None

    def position_channels(self, pos: Tensor, which: str) -> Tensor:
        """``LN(p_pos) U_Q`` (``which="q"``) or ``LN(p_pos) U_K`` (``"k"``): ``(B|1, H, T, D)``."""
        self.check_length(pos)
        proj = self.u_q if which == "q" else self.u_k
        return tupe_position_channels(pos, self.table, proj, n_heads=self.n_heads, ln_weight=self.ln_weight,
                                      ln_bias=self.ln_bias)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, q_pos: Tensor, k_pos: Tensor, causal: bool = False,
               attn_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
        """SDPA over ``[q, p U_Q]`` and ``[k, p U_K]`` with scale ``scale / sqrt(2)``.

        Args:
            q: ``(B, H, Tq, D)``; k, v: ``(B, Hkv, Tk, D)`` with ``H % Hkv == 0`` (k/v are expanded to ``H`` heads,
                because the positional key channels are per query head).
            q_pos, k_pos: int64 ``(Tq,)``/``(B, Tq)`` and ``(Tk,)``/``(B, Tk)``, each ``< max_seq_len``.
            causal: mask keys after each query (by index, bottom-right aligned).
            attn_mask: bool (True = attend) or additive float mask broadcastable to ``(B, H, Tq, Tk)``.
            scale: the content scale of ordinary attention, default ``1 / sqrt(D)``; TUPE divides it by ``sqrt(2)``
                (the paper's ``1 / sqrt(2d)``) and applies it to both terms.

        Returns:
            ``(B, H, Tq, Dv)`` in the dtype of ``q``.
        """
        n_rep = check_attend_inputs(self.name, q, k, v, n_heads=self.n_heads, head_dim=self.head_dim)
        b, _, tq, d = q.shape
        tk = k.shape[-2]
        check_positions(q_pos, tq, name="q_pos", batch=b, device=q.device)
        check_positions(k_pos, tk, name="k_pos", batch=b, device=q.device)
        scale = 1.0 / math.sqrt(d) if scale is None else scale
        pq = self.position_channels(q_pos, "q").to(q.dtype)  # (B|1, H, Tq, D)
        pk = self.position_channels(k_pos, "k").to(q.dtype)  # (B|1, H, Tk, D)
        q2 = torch.cat((q, pq.expand(b, -1, -1, -1)), dim=-1)  # (B, H, Tq, 2D)
        k2 = torch.cat((expand_kv(k, n_rep), pk.expand(b, -1, -1, -1)), dim=-1)  # (B, H, Tk, 2D)
        v2 = expand_kv(v, n_rep)  # (B, H, Tk, Dv)
        if causal and attn_mask is None and tq == tk:
            return F.scaled_dot_product_attention(q2, k2, v2, is_causal=True, scale=scale / math.sqrt(2))
        mask = attn_mask
        if causal or (mask is not None and mask.dtype != torch.bool):
            mask = additive_mask(tq, tk, causal=causal, attn_mask=attn_mask, dtype=q.dtype, device=q.device)
        return F.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask, scale=scale / math.sqrt(2))

    def _extend_hint(self) -> str:
        return " (TUPE's position table is learned, one row per position)"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, layer_norm={self.layer_norm}"
