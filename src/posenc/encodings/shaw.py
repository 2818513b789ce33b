"""Relative position representations (Shaw et al. 2018, arXiv 1803.02155), with both the key and the value term.

For query ``i`` and key ``j`` the relative distance ``j - i`` is clipped to ``[-k, k]`` and picks learned vectors
``a^K_{clip(j-i, k)}`` and ``a^V_{clip(j-i, k)}`` of size ``head_dim``, shared across heads as in the paper:

    e_ij = (q_i . k_j + q_i . a^K_ij) / sqrt(d)
    z_i  = sum_j softmax_j(e_ij) (v_j + a^V_ij)

Both are attention terms (:mod:`posenc.terms`), evaluated by the attention backends per block of query rows, and
neither ever builds the ``(Tq, Tk, D)`` tensor of the paper's notation:

- key term (a logit term): ``q @ a^K^T`` over the ``2k + 1`` clipped distances gives ``(B, H, rows, 2k+1)``, then
  each pair ``(i, j)`` gathers its bucket (:func:`shaw_key_logits`);
- value term: the attention probabilities are summed per clipped-distance bucket (a scatter-add into
  ``(B, H, rows, 2k+1)``) and multiplied by ``a^V`` (:func:`shaw_value_term`).

Extra memory is therefore ``O(rows * Tk)`` per block on the ``chunked`` backend (in the backward pass too), and the
``(B, H, Tq, Tk)`` scores of any explicit attention on ``dense``/``reference``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posenc._checks import check_int
from posenc.base import PositionalEncoding, register
from posenc.terms import AttentionCall, AttentionTerms, ScoreBlock, check_head_dim, positions_2d

__all__ = ["ShawRelative", "shaw_buckets", "shaw_key_logits", "shaw_value_term"]


def shaw_buckets(q_pos: Tensor, k_pos: Tensor, max_relative_position: int) -> Tensor:
    """``clip(k_pos[j] - q_pos[i], -k, k) + k``: bucket indices in ``[0, 2k]``.

    Args:
        q_pos: int64 ``(Tq,)`` or ``(B, Tq)``.
        k_pos: int64 ``(Tk,)`` or ``(B, Tk)``.
        max_relative_position: the clipping distance ``k``.

    Returns:
        int64 ``(1, Tq, Tk)`` or ``(B, Tq, Tk)``.
    """
    rel = positions_2d(k_pos)[:, None, :] - positions_2d(q_pos)[:, :, None]  # (B|1, Tq, Tk)  j - i
    return rel.clamp(-max_relative_position, max_relative_position) + max_relative_position


def _per_head(buckets: Tensor, shape: torch.Size) -> Tensor:
    """``(B|1, Tq, Tk)`` bucket indices -> ``(B, H, Tq, Tk)`` (a broadcast view) for gather/scatter."""
    b, h, tq, tk = shape
    return buckets[:, None].expand(b, h, tq, tk)


def shaw_key_logits(q: Tensor, key_table: Tensor, buckets: Tensor) -> Tensor:
    """``q_i . a^K_{bucket(i, j)}`` for every pair, without a ``(Tq, Tk, D)`` tensor.

    Args:
        q: ``(B, H, Tq, D)`` queries.
        key_table: ``(2k+1, D)`` relative key embeddings ``a^K``.
        buckets: int64 ``(B|1, Tq, Tk)`` from :func:`shaw_buckets`.

    Returns:
        ``(B, H, Tq, Tk)`` unscaled logits.
    """
    per_bucket = q @ key_table.t()  # (B, H, Tq, 2k+1)
    b, h, tq, _ = q.shape
    return per_bucket.gather(-1, _per_head(buckets, torch.Size((b, h, tq, buckets.shape[-1]))))


def shaw_value_term(probs: Tensor, value_table: Tensor, buckets: Tensor) -> Tensor:
    """``sum_j probs_ij a^V_{bucket(i, j)}``: probabilities summed per bucket, times ``a^V``.

    Args:
        probs: ``(B, H, Tq, Tk)`` attention probabilities.
        value_table: ``(2k+1, D)`` relative value embeddings ``a^V``.
        buckets: int64 ``(B|1, Tq, Tk)`` from :func:`shaw_buckets`.

    Returns:
        ``(B, H, Tq, D)``.
    """
    b, h, tq, _ = probs.shape
    mass = probs.new_zeros(b, h, tq, value_table.shape[0])  # (B, H, Tq, 2k+1)
    mass = mass.scatter_add(-1, _per_head(buckets, probs.shape), probs)
    return mass @ value_table


@register("shaw")
class ShawRelative(PositionalEncoding):
    """Shaw et al.'s relative position representations (arXiv 1803.02155): learned clipped key and value terms.

    ``e_ij = (q_i . k_j + q_i . a^K_{clip(j-i,k)}) * scale`` and ``z_i = sum_j a_ij (v_j + a^V_{clip(j-i,k)})``,
    with ``scale = 1/sqrt(head_dim)`` by default. Both are attention terms (:meth:`terms`), so every backend but
    ``flex``/``sdpa``'s fused kernels computes them, ``chunked`` in ``O(rows * Tk)``; only relative distances enter, so
    shifting all positions by a constant changes nothing, and positions of any size are fine (distances past ``k``
    share the outermost embedding).

    Args:
        max_relative_position: the clipping distance ``k`` (paper: 16 for its best base model, 2+ all similar);
            ``2k + 1`` learned vectors per table.
        value_term: add the value term ``a^V`` (the paper's full method). ``False`` keeps only the key term, as most
            later implementations do.
        init_std: normal initialisation of both tables; default ``head_dim ** -0.5``, so ``q . a^K`` is on the scale
            of ``q . k``.

    Shapes: ``q`` ``(B, H, Tq, D)``, ``k``/``v`` ``(B, Hkv, Tk, D)``, positions ``(T,)`` or ``(B, T)``; tables
    ``(2k+1, D)`` shared by all heads.
    """

    family = "relative"
    paper = "1803.02155"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 max_relative_position: int = 16, value_term: bool = True, init_std: float | None = None) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        check_int(max_relative_position, "shaw: max_relative_position (the clipping distance k)", minimum=1,
                  hint="The paper uses k = 16; k = 2 already works well.")
        if not isinstance(value_term, bool):
            raise TypeError(f"shaw: value_term must be True or False; got {type(value_term).__name__} "
                            f"{value_term!r}.")
        std = self.head_dim**-0.5 if init_std is None else init_std
        if not (isinstance(std, (int, float)) and math.isfinite(std) and std >= 0):
            raise ValueError(f"shaw: init_std must be a finite number >= 0; got {init_std!r}.")
        self.max_relative_position = max_relative_position
        n_buckets = 2 * max_relative_position + 1
        self.key_table = nn.Parameter(torch.randn(n_buckets, self.head_dim) * std)  # (2k+1, D) a^K
        self.value_table = nn.Parameter(torch.randn(n_buckets, self.head_dim) * std) if value_term else None

    @property
    def value_term(self) -> bool:
        return self.value_table is not None

    def terms(self, call: AttentionCall) -> ShawTerms:
        """The key term ``q_i . a^K_{clip(j-i,k)} * scale`` and the value term ``sum_j p_ij a^V_{clip(j-i,k)}``.

        Args:
            q: ``(B, H, Tq, D)``; k, v: ``(B, Hkv, Tk, D)``; positions ``(T,)`` or ``(B, T)``; ``scale`` multiplies
                both logit terms.
        """
        q, k, v = call.q, call.k, call.v
        check_head_dim(self, q, k)
        if self.value_table is not None and v.shape[-1] != self.head_dim:
            raise ValueError(f"shaw: the value term adds a^V of size head_dim={self.head_dim} to v, but v has "
                             f"{v.shape[-1]} channels; build it with value_term=False for a different value width.")
        return ShawTerms(self)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_relative_position={self.max_relative_position}, " \
               f"value_term={self.value_term}"


class ShawTerms(AttentionTerms):
    """Shaw's key term (a logit term) and value term for one call; see :class:`ShawRelative`."""

    pair_tensors = 9  # measured at T=4096 (live tensors in chunked's backward pass): scores, logits, probs, grads
    call_tensors = ()  # the block methods read the block and the encoding's tables only

    def __init__(self, pe: ShawRelative) -> None:
        self.pe = pe
    def _buckets(self, blk: ScoreBlock) -> Tensor:
        return shaw_buckets(blk.q_pos, blk.k_pos, self.pe.max_relative_position)  # (B|1, rows, keys)

    def logits(self, scores: Tensor, blk: ScoreBlock) -> Tensor:
        key_table = self.pe.key_table.to(blk.q.dtype)  # (2k+1, D)
        return scores + shaw_key_logits(blk.q, key_table, self._buckets(blk)) * blk.scale  # (B, H, rows, keys)

    def values(self, probs: Tensor, blk: ScoreBlock) -> Tensor | None:
        if self.pe.value_table is None:
            return None
        return shaw_value_term(probs, self.pe.value_table.to(probs.dtype), self._buckets(blk))  # (B, H, rows, D)
