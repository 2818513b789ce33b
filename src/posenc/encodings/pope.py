"""Polar coordinate position embedding, PoPE (Gopalakrishnan et al. 2025, arXiv 2509.10534): what and where, apart.

RoPE rotates pairs of channels, so a pair's angle mixes the content ("what": the pair's own phase) with the position
("where"). PoPE turns every one of the ``d`` channels into a 2-D vector whose length is the content and whose angle is
the position alone::

    theta_c = base^(-c / d),  c = 0 .. d-1              (d frequencies, over d, not d/2 as RoPE)
    mu = softplus(x)                                     (a non-negative magnitude per channel)
    s_ts = sum_c mu(q_t)_c mu(k_s)_c cos((t - s) theta_c - delta_c) / sqrt(d)

with a learned phase offset ``delta_c`` per head and channel, clamped to ``[-2 pi, 0]``. As a rotation, q and k
become ``2d`` wide: ``q -> [mu cos(t theta - delta), mu sin(t theta - delta)]`` and
``k -> [mu cos(s theta), mu sin(s theta)]``, whose dot product is the sum above. The softmax scale stays
``1 / sqrt(d)``, that of the heads before the rotation (:meth:`PoPE.rotated_width` declares the width;
:func:`posenc.attention` keeps the scale).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posenc._angles import exact_angles
from posenc._checks import reads_values
from posenc.base import PositionalEncoding, check_positions_layout, register
from posenc.encodings.rope import check_head_tensor
from posenc.positions import Positions

__all__ = ["PHASE_INITS", "PoPE", "pope_frequencies"]

PHASE_INITS = ("zeros", "uniform")


def pope_frequencies(head_dim: int, base: float = 10000.0, *, device: torch.device | str | None = None) -> Tensor:
    """``theta_c = base^(-c / head_dim)`` for ``c = 0 .. head_dim - 1``, float64 ``(head_dim,)``."""
    return torch.pow(float(base), -torch.arange(head_dim, device=device, dtype=torch.float64) / head_dim)


@register("pope")
class PoPE(PositionalEncoding):
    """Polar coordinate position embedding (Gopalakrishnan et al. 2025, arXiv 2509.10534): magnitudes and phases apart.

    Formula (one head; ``i`` query at position ``t``, ``j`` key at position ``s``; ``d = head_dim``)::

        s_ij = sum_{c < d} softplus(q_c) softplus(k_c) cos((t - s) theta_c - delta_c) / sqrt(d),
        theta_c = base^(-c / d),  delta_c = clamp(phase[h, c], -2 pi, 0)

    :meth:`rotate` returns ``q' = [mu_q cos(t theta - delta), mu_q sin(t theta - delta)]`` and
    ``k' = [mu_k cos(s theta), mu_k sin(s theta)]``, so ``q' . k'`` is the sum above. The phase sits on the query
    side (x-transformers' ``PolarEmbedding`` adds it to the keys' angles: the same scores, since only ``t - s - delta``
    enters), so the keys carry no head-specific term and serve any number of kv heads (grouped-query attention).

    Shapes: q ``(B, H, Tq, d)``, k ``(B, Hkv, Tk, d)`` -> q' ``(B, H, Tq, 2d)``, k' ``(B, Hkv, Tk, 2d)``
    (:meth:`rotated_width`); values stay ``d`` wide and the attention output is ``(B, H, Tq, d)``; the softmax scale is
    ``1 / sqrt(d)`` (:func:`posenc.attention`'s default for an encoding that widens q/k). Positions ``(T,)`` or
    ``(B, T)``. The learned phase ``phase`` is ``(n_heads, d)``; a one-head q (a plot's probe) gets head 0's.

    Args:
        base: frequency base (10000, as the paper and x-transformers).
        phase_init: ``"uniform"`` (default: ``U(-2 pi, 0)``, x-transformers' ``polar_bias_uniform_init=True``) or
            ``"zeros"`` (x-transformers' default: no offset). Zeros sit on the clamp's upper edge, where the offset
            has only a one-sided derivative and a step upwards leaves it with none (the clamp then passes no
            gradient until something pulls it back): the default starts inside the interval.

    Limits: the angles ``t theta_c`` are formed exactly in float64 at every int64 position (:mod:`posenc._angles`),
    the phase is subtracted in float64, and only the cosines/sines are rounded to float32; the products with
    ``softplus`` run in float32 (float64 for float64 inputs) and are cast back to the input dtype. At position 10^6 the
    rotated q and k carry float32 rounding only (~1e-7 relative); a bfloat16 result carries bfloat16's 8 bits.

    KV cache: keys depend on their own position only (no phase), so a model caches them rotated, ``2d`` wide beside
    ``d``-wide values, and decoding step by step equals the full forward.
    """

    family = "rotary"
    paper = "2509.10534"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: float = 10000.0, phase_init: str = "uniform") -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if isinstance(base, bool) or not isinstance(base, (int, float)) or not math.isfinite(base) or base <= 1:
            raise ValueError(f"pope: base must be a finite number > 1; got {base!r}.")
        if phase_init not in PHASE_INITS:
            raise ValueError(f"pope: phase_init must be one of {PHASE_INITS} ('zeros': no offset, x-transformers' "
                             f"default; 'uniform': U(-2 pi, 0), the default); got {phase_init!r}.")
        self.base = float(base)
        self.phase_init = phase_init
        self.phase = nn.Parameter(torch.zeros(n_heads, self.head_dim))  # delta per head and channel (clamped in use)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``phase`` to zeros, or ``U(-2 pi, 0)`` with ``phase_init="uniform"``."""
        if self.phase.device.type == "meta":
            return
        with torch.no_grad():
            if self.phase_init == "uniform":
                self.phase.uniform_(-2.0 * math.pi, 0.0)
            else:
                self.phase.zero_()

    def rotated_width(self, head_dim: int) -> int:
        """q and k leave :meth:`rotate` ``2 * head_dim`` wide: a cosine and a sine part per channel."""
        return 2 * head_dim

    def inv_freq(self, device: torch.device | str | None = None) -> Tensor:
        """``theta_c`` as float64 ``(head_dim,)``."""
        return pope_frequencies(self.head_dim, self.base, device=device)

    def offsets(self) -> Tensor:
        """The phase offsets ``delta = clamp(phase, -2 pi, 0)``, ``(n_heads, head_dim)``, as the paper bounds them."""
        return self.phase.clamp(-2.0 * math.pi, 0.0)

    def _angles(self, x: Tensor, pos: Tensor, name: str) -> Tensor:
        """``pos * theta`` ``(B|1, 1, T, d)`` for ``x`` ``(B, H, T, d)``, exact, in float64 (float32 on MPS)."""
        check_positions_layout(pos, x.shape[-2], name=f"{name}_pos", batch=x.shape[0], device=x.device)
        dtype = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
        bound = self.__dict__.get("_bound_positions")
        shared = bound is not None and pos is bound.pos and self.trusts(pos)
        if shared and (dtype, x.device) in self.__dict__["_bound_tables"]:
            return self.__dict__["_bound_tables"][(dtype, x.device)]  # every layer of one forward: computed once
        if pos.numel() and reads_values(pos) and self.trusted_max(pos) is None:  # bound positions: checked already
            low = int(pos.min())
            if low < 0:
                raise ValueError(f"pope: {name}_pos must be non-negative; got a minimum of {low}.")
        angles = exact_angles(pos, self.inv_freq(x.device), dtype)  # (T, d) or (B, T, d)
        angles = angles[None, None] if angles.dim() == 2 else angles[:, None]
        if shared:
            self.__dict__["_bound_tables"][(dtype, x.device)] = angles
        return angles

    def bind(self, positions: Positions) -> PositionalEncoding:
        """A view for one forward: the angles of ``positions.pos`` are formed once for every layer, unchecked again."""
        if not positions.validated or positions.pos is None or not reads_values(positions.pos):
            return self  # torch.compile (no values to read) computes them in the graph
        return self.bound_view(positions)

    def _polar(self, x: Tensor, angles: Tensor) -> Tensor:
        """``[softplus(x) cos(angles), softplus(x) sin(angles)]`` ``(B, H, T, 2d)`` in ``x``'s dtype."""
        compute = torch.promote_types(x.dtype, torch.float32)
        mu = torch.nn.functional.softplus(x.to(compute))
        return torch.cat((mu * angles.cos().to(compute), mu * angles.sin().to(compute)), dim=-1).to(x.dtype)

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate q ``(B, H, Tq, d)`` and k ``(B, Hkv, Tk, d)`` into ``(B, H, Tq, 2d)`` and ``(B, Hkv, Tk, 2d)``.
        """
        check_head_tensor(q, self.head_dim, "q")
        check_head_tensor(k, self.head_dim, "k")
        if q.shape[1] not in (1, self.n_heads):
            raise ValueError(f"pope: q has {q.shape[1]} heads but the phase offsets were built for n_heads="
                             f"{self.n_heads}; build PoPE with the model's n_heads.")
        q_angles = self._angles(q, q_pos, "q")
        same = k_pos is q_pos and k.shape[0] == q.shape[0] and k.shape[2] == q.shape[2]
        k_angles = q_angles if same else self._angles(k, k_pos, "k")
        # delta on the query side: cos((t theta - delta) - s theta) = cos((t - s) theta - delta), the paper's score
        delta = self.offsets().to(q_angles.dtype)[:, None]  # (H, 1, d): broadcast over positions
        if q.shape[1] == 1:  # a one-head probe (the plots' all-ones query) sees the first head's offsets
            delta = delta[:1]
        return self._polar(q, q_angles - delta), self._polar(k, k_angles)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.base:g}, phase_init={self.phase_init!r}"
