"""One positions object per forward pass: :class:`Positions`, validated once where positions enter.

A model's forward (``Transformer(tokens, positions=...)``) builds one :class:`Positions`, validates it once (one
``aminmax`` over the token positions, the only read of their values) and passes it to every layer: the layers'
``posenc.attention(..., positions=...)`` calls and the encoding bound to it (:meth:`PositionalEncoding.bind
<posenc.base.PositionalEncoding.bind>`) then skip the value checks that would otherwise repeat, with a host sync
each, in every layer.

What it carries:

- ``pos`` ``(T,)`` or ``(B, T)``: positions of the call's tokens (default ``offset + arange(T)``; a KV-cache step
  continues where the cache stopped);
- ``key_pos``: positions of every key the call attends to (the cached keys, then the call's own), filled in by the
  model;
- ``segment_ids`` ``(B, T)``: packed documents; a token attends only to keys of its own segment;
- structure for the encodings that read it (each declares which in ``PositionalEncoding.reads``; every other
  encoding sees the plain positions): ``coordinates`` -- a table ``(L, A)`` or ``(B, L, A)`` that positions index,
  row ``p`` holding the coordinates of the token at position ``p`` (``(row, col)`` grids, M-RoPE's
  ``(time, height, width)``, hierarchical levels); ``adjacency`` ``(N, N)`` or ``(B, N, N)``, the graph whose nodes
  the tokens are; ``token_ids`` ``(T,)`` or ``(B, T)``, the ids an encoding derives its structure from
  (``hierarchical`` with ``sentence_end_ids``).

Example:
    >>> from posenc.encodings.grid2d import grid_coordinates
    >>> logits = model(patches, positions=Positions(coordinates=grid_coordinates(8, 8, prefix_tokens=1)))
    >>> logits = model(node_tokens, positions=Positions(adjacency=adj))       # laplacian / rwpe / spd
    >>> logits = model(tokens, positions=torch.arange(3, 3 + T))                # plain positions still work
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from posenc._checks import reads_values

__all__ = ["STRUCTURE_FIELDS", "Positions"]

STRUCTURE_FIELDS = ("coordinates", "adjacency", "token_ids")  # what an encoding may declare in ``reads``


@dataclasses.dataclass(frozen=True)
class Positions:
    """The positions of one forward pass (see the module docstring); ``validated`` once checked at the boundary.

    Build it with the fields you have; the model fills in ``pos`` (when left out), ``key_pos``, ``max_pos`` and
    ``validated``. Every tensor field is optional.
    """

    pos: Tensor | None = None  # (T,) or (B, T) int64: positions of this call's tokens
    key_pos: Tensor | None = None  # (Tk,) or (B, Tk) int64: positions of every key (KV cache, then pos)
    segment_ids: Tensor | None = None  # (B, T) int: packed documents; tokens attend within their segment only
    # (L, A) or (B, L, A): coordinates of the token at each position; int64, or float32/float64 (continuous, e.g.
    # normalised to [0, 1] or time stamps) for encodings with ``continuous_coordinates = True`` (string, liere, comrope)
    coordinates: Tensor | None = None
    adjacency: Tensor | None = None  # (N, N) or (B, N, N): nonzero = edge between the nodes at two positions
    token_ids: Tensor | None = None  # (T,) or (B, T): token ids, for encodings that derive structure from them
    max_pos: int | None = None  # the largest value in pos (set with validated: no device sync to read it)
    max_key_pos: int | None = None  # the largest value in key_pos (the model sets it with key_pos)
    validated: bool = False  # pos (and key_pos) were checked by validate(): hooks below may trust them

    @classmethod
    def of(cls, positions: Tensor | Positions | None) -> Positions:
        """``positions`` as a :class:`Positions`: a tensor becomes ``Positions(pos=tensor)``, ``None`` an empty one."""
        if positions is None:
            return _EMPTY
        if isinstance(positions, Positions):
            return positions
        if isinstance(positions, Tensor):
            return cls(pos=positions)
        raise TypeError(f"positions must be an int64 tensor of shape (T,) or (B, T), a posenc.Positions or None; got "
                        f"{type(positions).__name__}. Hint: Positions(coordinates=...) for a grid, "
                        f"Positions(adjacency=...) for a graph.")

    @property
    def structure(self) -> dict[str, Tensor]:
        """The structure fields that are set (``coordinates``, ``adjacency``, ``token_ids``)."""
        return {name: getattr(self, name) for name in STRUCTURE_FIELDS if getattr(self, name) is not None}

    def replace(self, **changes) -> Positions:
        """A copy with ``changes`` (:func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def validate(self, length: int, *, batch: int | None = None, device: torch.device | None = None,
                 name: str = "positions") -> Positions:
        """Check ``pos`` (dtype, shape, batch, device, non-negative) with one read of its values; ``validated=True``.

        The structure fields are checked by the encodings that read them, when they are bound
        (:meth:`posenc.PositionalEncoding.bind`); ``segment_ids`` here, and float ``coordinates`` for what no encoding
        can use (a dtype other than float32/float64, a NaN or an infinity). Raises ``TypeError``/``ValueError`` that
        name the argument.
        """
        from posenc.base import check_positions_layout  # local: base imports this module

        if self.pos is None:
            raise ValueError(f"{name}: Positions.pos is not set; the model fills it in (offset + arange(T)).")
        check_positions_layout(self.pos, length, name=name, batch=batch, device=device)
        top = None
        if self.pos.numel() and reads_values(self.pos):
            lo_hi = self.pos.aminmax()
            lo, top = int(lo_hi.min), int(lo_hi.max)
            if lo < 0:
                raise ValueError(f"{name} must be non-negative; got a minimum of {lo}.")
        if self.segment_ids is not None:
            seg = self.segment_ids
            if not isinstance(seg, Tensor) or seg.dtype.is_floating_point or seg.dtype.is_complex or \
                    seg.dtype == torch.bool or seg.dim() != 2 or seg.shape[-1] != length or \
                    (batch is not None and seg.shape[0] not in (1, batch)):
                got = f"{seg.dtype} of shape {tuple(seg.shape)}" if isinstance(seg, Tensor) else type(seg).__name__
                raise ValueError(f"segment_ids must be an integer tensor (B, T) = ({batch}, {length}), one document "
                                 f"id per token; got {got}.")
            if device is not None and seg.device != device:
                raise ValueError(f"segment_ids is on {seg.device} but the input is on {device}.")
        coords = self.coordinates
        if isinstance(coords, Tensor) and coords.dtype.is_floating_point:
            # once per forward, here: a NaN would otherwise turn every score it touches into NaN in every layer
            if coords.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"continuous coordinates must be float32 or float64; got {coords.dtype}, whose "
                                f"rounding would move the positions. Hint: coords.double().")
            if coords.numel() and reads_values(coords) and not bool(torch.isfinite(coords).all()):
                raise ValueError("coordinates must be finite; got a NaN or an infinity. Hint: mask such tokens "
                                 "instead of giving them coordinates.")
        return dataclasses.replace(self, max_pos=top, validated=True)

    def with_keys(self, key_pos: Tensor, max_key_pos: int | None) -> Positions:
        """A copy whose keys are ``key_pos`` (already validated: the cached keys' positions and ``pos``)."""
        return dataclasses.replace(self, key_pos=key_pos, max_key_pos=max_key_pos)


_EMPTY = Positions()
