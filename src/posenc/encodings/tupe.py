"""Untied positional encoding, TUPE (Ke et al. 2021, arXiv 2006.15595), without a T x T positional tensor.

TUPE does not add position embeddings to the tokens. Each head instead adds a positional correlation, computed from
learned absolute embeddings ``p`` with their own projections, to the content logit:

    a_ij = (q_i . k_j) / sqrt(2d)  +  (p_i U_Q)(p_j U_K)^T / sqrt(2d)

with ``d`` the head dim (the ``sqrt(2d)`` keeps the sum of two terms at unit variance). It is an attention term
(:mod:`posenc.terms`): the per-head position channels ``p_{q_pos} U_Q`` ``(B|1, H, Tq, D)`` and ``p_{k_pos} U_K``
``(B|1, H, Tk, D)`` are formed once per call, and each block of query rows adds their product to its scores
rescaled by ``1 / sqrt(2)``, so ``chunked`` holds only ``O(rows * Tk)`` of the positional correlation, never
``(H, T, T)``. (The term is a dot product too: ``a_ij = [q_i, p_i U_Q] . [k_j, p_j U_K] / sqrt(2d)``, which
:func:`tupe_position_channels` makes easy to check.)

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

from posenc.base import PositionalEncoding, register
from posenc.terms import AttentionCall, AttentionTerms, ScoreBlock, check_head_dim, compute_dtype

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

    Computed as an attention term (:meth:`terms`, see the module docstring); positions are rows of a learned table
    of ``max_seq_len`` rows, so positions past it raise (``extrapolates = False``).

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

    def terms(self, call: AttentionCall) -> TUPETerms:
        """The untied positional term; the whole score becomes ``(q . k + pq . pk) * scale / sqrt(2)``.

        Args:
            q: ``(B, H, Tq, D)``; k, v: ``(B, Hkv, Tk, D)``; positions ``(T,)`` or ``(B, T)``, each
                ``< max_seq_len``. ``scale`` is the content scale of ordinary attention (``1 / sqrt(D)`` by
                default); TUPE divides it by ``sqrt(2)`` (the paper's ``1 / sqrt(2d)``) for both terms.
        """
        q, k, q_pos, k_pos = call.q, call.k, call.q_pos, call.k_pos
        check_head_dim(self, q, k)
        ct = compute_dtype(q)
        pq = self.position_channels(q_pos, "q").to(ct)  # (B|1, H, Tq, D)
        pk = self.position_channels(k_pos, "k").to(ct)  # (B|1, H, Tk, D)
        return TUPETerms(pq, pk)

    def _extend_hint(self) -> str:
        return " (TUPE's position table is learned, one row per position)"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, layer_norm={self.layer_norm}"


class TUPETerms(AttentionTerms):
    """TUPE's positional correlation for one call: ``(scores + (pq . pk) * scale) / sqrt(2)``."""

    pair_tensors = 6  # estimated: scores, the positional correlation, the sum, probabilities, grads
    call_tensors = ("pq", "pk")  # the position channels, formed once per call from the table and U_Q, U_K

    def __init__(self, pq: Tensor, pk: Tensor) -> None:
        self.pq = pq  # (B|1, H, Tq, D)
        self.pk = pk  # (B|1, H, Tk, D)

    def logits(self, scores: Tensor, blk: ScoreBlock) -> Tensor:
        positional = blk.query_rows(self.pq) @ blk.key_rows(self.pk).transpose(-2, -1)  # (B|1, H, rows, keys)
        return (scores + positional * blk.scale) / math.sqrt(2)
