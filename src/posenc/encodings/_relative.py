"""The shared core of the pure bias encodings (ALiBi, T5, KERPLE, FIRE, Sandwich, dynamic bias).

Not an encoding (the leading underscore keeps the auto-discovery in ``encodings/__init__.py`` from importing it as
one). Each bias encoding defines one elementwise function,

    ``pair_bias(q, k, h, params) -> bias``

of query positions ``q``, key positions ``k`` (int64) and head indices ``h`` (int64), all broadcastable against each
other, and :class:`PairwiseBias` turns it into both hooks:

- ``bias(q_pos, k_pos)`` evaluates it once on broadcast grids, ``q`` as ``(B|1, 1, Tq, 1)``, ``k`` as
  ``(B|1, 1, 1, Tk)`` and ``h`` as ``(1, H, 1, 1)``, giving ``(H, Tq, Tk)`` (or ``(B, H, Tq, Tk)`` for per-sequence
  positions);
- ``score_mod(q_pos, k_pos)`` returns a FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)`` that looks up
  ``q = q_pos[(b,) q_idx]`` and ``k = k_pos[(b,) kv_idx]`` and adds ``pair_bias(q, k, h, params)`` to the score.

Because both hooks run the very same elementwise code, they give bit-identical numbers in eager mode whether the
indices are 0-d (FlexAttention's vmap) or broadcast grids, and no ``T x T`` tensor exists on the ``score_mod``
path. ``params`` is prepared once per call (parameters cast to the compute dtype, small lookup tables), so the
closure captures plain tensors, which is what ``torch.compile`` wants.

The compute dtype is float32, or float64 when the encoding's parameters/buffers are float64 (``pe.double()``, for
gradcheck). Parameters stored in bfloat16/float16 (after ``pe.to(torch.bfloat16)``) are upcast to float32 first,
so ``bias`` always returns float32 for a float32/bf16/fp16 encoding.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from posenc._checks import reads_values
from posenc.base import PositionalEncoding, check_positions
from posenc.positions import Positions

__all__ = ["PairwiseBias", "distance_range"]


def distance_range(q_pos: Tensor, k_pos: Tensor) -> tuple[int, int]:
    """The smallest and largest ``q - k`` over all query/key pairs (per-sequence positions included).

    Pairs are formed within a sequence only, so ``(B, T)`` positions shifted differently per row (packing, KV caches
    at different offsets) do not widen the range. For contiguous positions it has ``Tq + Tk - 1`` values, so lookup
    tables over it stay ``O(T)``.
    """
    if q_pos.numel() == 0 or k_pos.numel() == 0:
        return 0, 0
    if not (reads_values(q_pos) and reads_values(k_pos)):  # meta: no values; the range of contiguous positions
        return 1 - k_pos.shape[-1], q_pos.shape[-1] - 1
    q_lo, q_hi = q_pos.amin(-1), q_pos.amax(-1)  # (B,) or ()
    k_lo, k_hi = k_pos.amin(-1), k_pos.amax(-1)
    return int((q_lo - k_hi).min()), int((q_hi - k_lo).max())


class PairwiseBias(PositionalEncoding, metaclass=abc.ABCMeta):
    """Base class for additive attention biases computed from query and key *positions*.

    Subclasses implement :meth:`prepare` (parameters and tables for one call) and the elementwise
    :meth:`pair_bias`; ``bias`` and ``score_mod`` follow from them and always agree.
    """

    family = "relative"

    # -- what subclasses implement ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self, q_pos: Tensor, k_pos: Tensor, dtype: torch.dtype) -> dict[str, Any]:
        """Tensors (in ``dtype``, on the positions' device) and numbers :meth:`pair_bias` needs for this call."""

    @staticmethod
    @abc.abstractmethod
    def pair_bias(q: Tensor, k: Tensor, h: Tensor, p: dict[str, Any]) -> Tensor:
        """Elementwise bias for query positions ``q``, key positions ``k`` and heads ``h`` (broadcastable)."""

    # -- the hooks --------------------------------------------------------------------------------------------------
    def compute_dtype(self) -> torch.dtype:
        """float64 when the encoding's floating tensors are float64, else float32."""
        for t in (*self.parameters(), *self.buffers()):
            if t.dtype.is_floating_point:
                return torch.float64 if t.dtype == torch.float64 else torch.float32
        return torch.float32

    def bind(self, positions: Positions) -> PairwiseBias:
        """A view for one forward that builds the bias of ``(positions.pos, positions.key_pos)`` once for every layer.

        The view trusts those positions (checked where they entered) and their slices (``chunked`` asks per block).
        """
        if not positions.validated or positions.pos is None or not reads_values(positions.pos):
            return self
        return self.bound_view(positions)

    def _check(self, q_pos: Tensor, k_pos: Tensor) -> None:
        if self.trusts(q_pos) and self.trusts(k_pos):
            return  # a bound view's own positions: checked once, where they entered
        check_positions(q_pos, q_pos.shape[-1] if isinstance(q_pos, Tensor) and q_pos.dim() else -1, name="q_pos")
        check_positions(k_pos, k_pos.shape[-1] if isinstance(k_pos, Tensor) and k_pos.dim() else -1, name="k_pos")
        if q_pos.device != k_pos.device:
            raise ValueError(f"{self.name}: q_pos is on {q_pos.device} but k_pos is on {k_pos.device}; put both on "
                             f"the attention's device.")
        if q_pos.dim() == 2 and k_pos.dim() == 2 and 1 not in (q_pos.shape[0], k_pos.shape[0]) and \
                q_pos.shape[0] != k_pos.shape[0]:
            raise ValueError(f"{self.name}: q_pos has batch size {q_pos.shape[0]} but k_pos has {k_pos.shape[0]}; "
                             f"per-sequence positions must agree on B (or use (T,) positions shared by the batch).")
        self.check_length(q_pos)
        self.check_length(k_pos)

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """The bias ``(H, Tq, Tk)`` for ``(T,)`` positions, ``(B, H, Tq, Tk)`` when either is ``(B, T)``.

        A view bound to a forward's positions (:meth:`bind`) builds the bias of exactly those positions once and
        returns it to every layer (a KV-cache decode step builds its bias once, not once per layer); any other
        positions are checked and computed per call.

        Args:
            q_pos: int64 query positions ``(Tq,)`` or ``(B, Tq)``.
            k_pos: int64 key positions ``(Tk,)`` or ``(B, Tk)``.

        Returns:
            float32 tensor (float64 for a float64 encoding).
        """
        bound = self.__dict__.get("_bound_positions")
        if bound is not None and q_pos is bound.pos and k_pos is bound.key_pos:
            tables = self.__dict__["_bound_tables"]
            if "bias" not in tables:
                tables["bias"] = self._bias(q_pos, k_pos)
            return tables["bias"]
        return self._bias(q_pos, k_pos)

    def _bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        self._check(q_pos, k_pos)
        batched = q_pos.dim() == 2 or k_pos.dim() == 2
        p = self.prepare(q_pos, k_pos, self.compute_dtype())
        q = (q_pos if q_pos.dim() == 2 else q_pos[None])[:, None, :, None]  # (B|1, 1, Tq, 1)
        k = (k_pos if k_pos.dim() == 2 else k_pos[None])[:, None, None, :]  # (B|1, 1, 1, Tk)
        h = torch.arange(self.n_heads, device=q_pos.device)[None, :, None, None]  # (1, H, 1, 1)
        out = self.pair_bias(q, k, h, p)
        shape = (max(q.shape[0], k.shape[0]), self.n_heads, q.shape[2], k.shape[3])
        out = out.expand(shape)  # a bias that ignores h or q (or k) comes back with size-1 dims
        return out if batched else out[0]

    def score_mod(self, q_pos: Tensor, k_pos: Tensor) -> Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]:
        """A FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)`` adding exactly :meth:`bias`'s numbers.

        ``q_idx``/``kv_idx`` index ``q_pos``/``k_pos`` (row ``b`` for ``(B, T)`` positions). The closure works on 0-d
        indices (FlexAttention) and on broadcastable index tensors alike; the bias is cast to ``score``'s dtype
        before it is added, as the dense path does.
        """
        self._check(q_pos, k_pos)
        p = self.prepare(q_pos, k_pos, self.compute_dtype())
        pair_bias = self.pair_bias
        q_batched, k_batched = q_pos.dim() == 2, k_pos.dim() == 2

        def relative_bias_score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            q = q_pos[b, q_idx] if q_batched else q_pos[q_idx]
            k = k_pos[b, kv_idx] if k_batched else k_pos[kv_idx]
            return score + pair_bias(q, k, h, p).to(score.dtype)

        relative_bias_score_mod.__name__ = f"{self.name}_score_mod"
        return relative_bias_score_mod
