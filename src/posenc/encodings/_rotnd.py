"""Learned rotations of N-d coordinates, shared by ``string``, ``liere`` and ``comrope``.

Not an encoding (the leading underscore keeps auto-discovery from importing it as one).

All three rotate each query/key head vector ``x`` by an orthogonal ``R(r) = exp(sum_k r_k L_k)``, ``r`` the token's
coordinates (``A`` = 1, 2 or 3 axes), ``L_k`` skew-symmetric generators. What differs is how the generators are
parametrised and hence how ``exp`` is computed:

- ``string`` (Cayley): ``L_k = P^T D_k P`` with ``D_k`` RoPE's block-diagonal generators, so
  ``R(r) = P^T RoPE(r) P``; circulant: ``L_k = C_k - C_k^T``, diagonalised by the DFT;
- ``comrope``: commuting block generators, one ``exp`` of a ``b x b`` block per (token, block);
- ``liere``: free skew-symmetric ``b x b`` block generators (``b = head_dim``: dense), one ``exp`` per (token, block).

Coordinates come as :class:`~posenc.encodings._structured.StructuredPositions` reads them: ``(B, T, A)`` to the
hooks, or a table ``Positions(coordinates=...)`` indexed by plain positions, int64 or float32/float64
(``continuous_coordinates``). Without a table, a plain sequence has coordinates ``(0, ..., 0, p)``: on one axis,
``r = p``. Every coordinate is multiplied by ``position_scale`` before use.

Grouped-query attention: the generators come in ``rotation_heads`` sets ``G``; head ``h`` of a tensor with ``n``
heads uses set ``h * G // n``, so a query head and the key head it reads share a set when ``G`` divides the number of
key/value heads. The papers learn one set per head (``G = n_heads``); the default ``G = 1`` works with any head count.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from posenc._checks import check_int
from posenc.base import PositionalEncoding
from posenc.encodings._structured import StructuredPositions
from posenc.encodings.rope import check_head_tensor

__all__ = ["AXIS_NAMES", "BlockGenerators", "RotationND", "apply_blocks", "head_sets", "skew"]

AXIS_NAMES = ("x", "y", "z")


def head_sets(n_heads: int, groups: int, who: str) -> Tensor:
    """Index ``(n_heads,)`` of the generator set each of ``n_heads`` heads uses: head ``h`` uses ``h * G // n``."""
    if n_heads % groups:
        raise ValueError(f"{who}: a tensor with {n_heads} heads cannot use rotation_heads={groups} generator sets; "
                         f"rotation_heads must divide the number of key/value heads (grouped-query attention).")
    return torch.arange(n_heads) * groups // n_heads


def skew(raw: Tensor) -> Tensor:
    """The skew-symmetric matrix of a raw parameter's strict upper triangle: ``U - U^T``, ``U = triu(raw, 1)``."""
    upper = torch.triu(raw, diagonal=1)
    return upper - upper.transpose(-1, -2)


def apply_blocks(x: Tensor, rot: Tensor) -> Tensor:
    """Block ``j`` of each head vector of ``x`` ``(B, H, T, D)`` multiplied by ``rot[..., j, :, :]``.

    Args:
        x: ``(B, H, T, D)``.
        rot: rotation blocks ``(B|1, H|1, T, nb, b, b)`` with ``nb * b = D`` (any float dtype).

    Returns:
        ``(B, H, T, D)`` like ``x``; the product runs in float32 (float64 for float64 input).
    """
    compute = torch.promote_types(x.dtype, torch.float32)
    nb, b = rot.shape[-3], rot.shape[-1]
    xb = x.to(compute).unflatten(-1, (nb, b))  # (B, H, T, nb, b)
    out = torch.einsum("...ij,...j->...i", rot.to(compute), xb)
    return out.flatten(-2).to(x.dtype)


class RotationND(StructuredPositions, PositionalEncoding):
    """Plumbing of the learned N-d rotations (see the module docstring): coordinates, scale, heads, validation."""

    family = "rotary"
    allow_negative = True  # continuous grids put a CLS token anywhere (ComRoPE at 0.5), offsets may be negative
    continuous_coordinates = True
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int, causal: bool, axes: int,
                 position_scale: float | None, rotation_heads: int, default_scale: float | None) -> None:
        """``default_scale``: the ``position_scale`` when none is given; ``None`` means ``1 / max_seq_len`` (the
        papers' normalisation to [0, 1]), formed once the base class has validated ``max_seq_len``."""
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        who = type(self).name or type(self).__name__
        check_int(axes, f"{who}: axes", minimum=1)
        if axes > 3:
            raise ValueError(f"{who}: axes must be 1, 2 or 3 (a sequence, an image, a video); got {axes}.")
        check_int(rotation_heads, f"{who}: rotation_heads", minimum=1)
        if n_heads % rotation_heads:
            raise ValueError(f"{who}: rotation_heads must be a positive divisor of n_heads={n_heads}; got "
                             f"{rotation_heads}.")
        if position_scale is None:
            position_scale = 1.0 / max_seq_len if default_scale is None else default_scale
        if isinstance(position_scale, bool) or not isinstance(position_scale, (int, float)) or \
                not 0 < position_scale < float("inf"):
            raise ValueError(f"{who}: position_scale must be a finite number > 0 (coordinates are multiplied by it); "
                             f"got {position_scale!r}.")
        if self.head_dim % 2:
            raise ValueError(f"{who}: head_dim = dim // n_heads must be even (rotations act on planes); got "
                             f"head_dim={self.head_dim}.")
        self.n_axes = axes
        self.axis_names = AXIS_NAMES[:axes]
        self.position_scale = float(position_scale)
        self.rotation_heads = rotation_heads

    def plain_coordinates(self, pos: Tensor) -> Tensor:
        # a plain sequence lies along the last axis: (0, ..., 0, p); on one axis r = p
        zeros = [torch.zeros_like(pos)] * (self.n_axes - 1)
        return torch.stack((*zeros, pos), dim=-1)

    def scaled(self, coords: Tensor) -> Tensor:
        """Coordinates ``(B|1, T, A)`` (int or float) times ``position_scale``, in float64."""
        return coords.to(torch.float64) * self.position_scale

    @abc.abstractmethod
    def transform(self, x: Tensor, coords: Tensor) -> Tensor:
        """``R(coords) x`` for ``x`` ``(B, h, T, D)`` and coordinates ``(B|1, T, A)`` as given (int or float)."""

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate ``q`` ``(B, H, Tq, D)`` and ``k`` ``(B, Hkv, Tk, D)`` at ``(B, T, A)`` coordinates or positions."""
        return self.rotate_one(q, q_pos, "q"), self.rotate_one(k, k_pos, "k")

    def rotate_one(self, x: Tensor, pos: Tensor, name: str = "x") -> Tensor:
        """``R(r) x`` for one tensor ``x`` ``(B, h, T, D)`` at its coordinates or plain positions ``pos``."""
        check_head_tensor(x, self.head_dim, name)
        coords = self.resolve(pos, x.shape[-2], batch=x.shape[0], device=x.device, name=f"{name}_pos")
        return self.transform(x, coords)

    @abc.abstractmethod
    def generator_matrices(self, set_index: int = 0) -> Tensor:
        """The generators ``L_k`` of one set as dense ``(A, D, D)`` float64 skew-symmetric matrices, ``position_scale``
        folded in: ``R(r) = exp(sum_k r_k L_k)`` for the coordinates ``r`` as given. For pictures and checks (their
        commutators say how relative the encoding is), not for the forward pass, which never forms them."""

    def check_set(self, set_index: int) -> int:
        who = type(self).name
        if isinstance(set_index, bool) or not isinstance(set_index, int) or not 0 <= set_index < self.rotation_heads:
            raise ValueError(f"{who}: set_index must be an int in [0, {self.rotation_heads}) (rotation_heads="
                             f"{self.rotation_heads}); got {set_index!r}.")
        return set_index

    def sets(self, n_heads: int, device: torch.device) -> Tensor:
        return head_sets(n_heads, self.rotation_heads, type(self).name).to(device)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, axes={self.n_axes}, position_scale={self.position_scale:g}, "
                f"rotation_heads={self.rotation_heads}")


class BlockGenerators(RotationND):
    """Rotations ``exp(sum_k r_k A_k)`` with block-diagonal generators: ``nb`` blocks of ``b x b`` per head.

    Subclasses give the generators (:meth:`generators`); the exponential is taken of each ``b x b`` block of the
    summed generator, per token and generator set, in float64: cost ``O(T G nb b^3)`` per call (``nb b = D``), so
    dense ``D x D`` blocks cost ``D^2`` times more per token than RoPE's ``D``.
    """

    def __init__(self, *, block_size: int | None, **kw) -> None:
        super().__init__(**kw)
        who = type(self).name
        b = self.head_dim if block_size is None else block_size
        check_int(b, f"{who}: block_size", minimum=2)
        if self.head_dim % b:
            raise ValueError(f"{who}: block_size must divide head_dim={self.head_dim}; got {b}.")
        self.block_size = b
        self.n_blocks = self.head_dim // b

    @abc.abstractmethod
    def generators(self) -> Tensor:
        """Skew-symmetric generators ``(G, A, nb, b, b)`` in float64."""

    def generator_matrices(self, set_index: int = 0) -> Tensor:
        gen = self.generators()[self.check_set(set_index)].detach() * self.position_scale  # (A, nb, b, b)
        return torch.stack([torch.block_diag(*gen[k]) for k in range(self.n_axes)])

    def transform(self, x: Tensor, coords: Tensor) -> Tensor:
        gen = self.generators()  # (G, A, nb, b, b)
        total = torch.einsum("bta,ganij->bgtnij", self.scaled(coords), gen)  # (B|1, G, T, nb, b, b)
        # contiguous: matrix_exp raises on some einsum output strides (a view across two subspaces)
        rot = torch.linalg.matrix_exp(total.contiguous())  # float64, once per generator set, not per head sharing it
        return apply_blocks(x, rot[:, self.sets(x.shape[1], x.device)])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block_size={self.block_size}"
