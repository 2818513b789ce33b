"""Structured positions: coordinates with several axes (row/col, time/height/width, token/sentence/paragraph).

Not an encoding (the leading underscore keeps auto-discovery from importing it as one). Shared by ``grid2d``,
``mrope`` and ``hierarchical``.

A structured encoding takes positions in two forms:

- **coordinates** ``(B, T, A)`` int64 (``A`` axes) passed straight to its hooks, e.g. ``(row, col)`` per token;
  float32/float64 for the encodings with ``continuous_coordinates = True`` (the others refuse them);
- plain positions ``(T,)`` / ``(B, T)``, which is what :class:`posenc.Transformer` passes. They are then *indices
  into a coordinate table*, ``Positions(coordinates=table)`` given to the model (``model(x, positions=...)``) or to
  :meth:`~posenc.PositionalEncoding.bind` for a direct hook call: the token at position ``p`` has coordinates
  ``table[..., p, :]``. With no table, each encoding maps a plain position to coordinates its own documented way (a
  1 x T grid, text-only, one sentence), so every structured encoding also works on a plain sequence. Positions past
  the table follow the encoding's ``continue_coordinates`` rule (text after an image, more tokens of the last
  sentence) or raise.

Because the table is indexed by position, KV-cache decoding (positions ``offset, offset + 1, ...``) reads the same
coordinates a full forward does (the model's :class:`~posenc.model.KVCache` keeps the table of its first call). The
table is input, not a weight: it is never stored on the encoding (``bind`` returns a view holding it).
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from posenc._checks import reads_values
from posenc.base import check_integer_tensor, check_positions
from posenc.positions import Positions

__all__ = ["StructuredPositions", "gather_rows"]


def gather_rows(table: Tensor, pos: Tensor) -> Tensor:
    """``table`` ``(Bt, L, A)`` read at ``pos`` ``(T,)`` or ``(B, T)``: ``(max(Bt, B), T, A)``."""
    if pos.dim() == 1:
        return table[:, pos]  # (Bt, T, A)
    b = max(table.shape[0], pos.shape[0])
    table = table.expand(b, -1, -1)
    pos = pos.expand(b, -1)
    return torch.gather(table, 1, pos.unsqueeze(-1).expand(-1, -1, table.shape[-1]))  # (B, T, A)


class StructuredPositions(abc.ABC):
    """Mixin for encodings whose positions have ``n_axes`` coordinates (see the module docstring).

    Subclasses set ``n_axes``, ``axis_names`` and implement :meth:`plain_coordinates`; they may override
    :meth:`continue_coordinates` to define positions past the coordinate table.
    """

    n_axes: int = 1
    axis_names: tuple[str, ...] = ()
    allow_negative: bool = False  # whether coordinates may be negative (e.g. a CLS token outside a grid)
    # whether float32/float64 coordinates are read as they are (ComRoPE's [0, 1] grids, video time stamps); the
    # others refuse float coordinates, naming the encodings that take them
    continuous_coordinates: bool = False

    reads = ("coordinates",)
    _coordinates: Tensor | None = None  # (Bt, L, A): the table of a bound view; None on the encoding itself

    # -- the coordinate table ------------------------------------------------------------------------------------------
    def bind(self, positions: Positions):
        """A view of the encoding reading ``positions.coordinates`` (see the module docstring), or ``self``."""
        table = self.coordinate_table(positions)
        if table is None:
            return super().bind(positions)
        return self.bound_view(positions, _coordinates=table)

    def coordinate_table(self, positions: Positions) -> Tensor | None:
        """The validated ``(Bt, L, A)`` table ``positions`` give this encoding, or ``None`` when they give none."""
        if positions.coordinates is None:
            return None
        table = self.check_coordinates(positions.coordinates, name="coordinates", allow_2d=True)
        return table.unsqueeze(0) if table.dim() == 2 else table

    def check_coordinates(self, coords: Tensor, *, name: str, allow_2d: bool = False) -> Tensor:
        who = getattr(self, "name", "") or type(self).__name__
        axes = ", ".join(self.axis_names) or f"{self.n_axes} axes"
        shapes = "(L, A) or (B, L, A)" if allow_2d else "(B, T, A)"
        continuous = self.continuous_coordinates and isinstance(coords, Tensor) and coords.dtype.is_floating_point
        if continuous:
            if coords.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"{who}: {name} must be int64, float32 or float64 coordinates; got {coords.dtype}. "
                                f"Hint: coords.double().")
        else:
            hint = " Hint: coords.long()."
            if isinstance(coords, Tensor) and coords.dtype.is_floating_point:
                hint = (f" {who} takes integer coordinates only; continuous coordinates are read by the encodings "
                        f"with continuous_coordinates = True (string, liere, comrope).{hint}")
            check_integer_tensor(coords, name=f"{who}: {name}", shape=f"{shapes} with A = {self.n_axes} ({axes})",
                                 what="coordinates", dtype_hint=hint)
        if coords.dim() not in ((2, 3) if allow_2d else (3,)) or coords.shape[-1] != self.n_axes:
            raise ValueError(f"{who}: {name} must have shape {shapes} with A = {self.n_axes} ({axes}); got shape "
                             f"{tuple(coords.shape)}.")
        if continuous and coords.numel() and reads_values(coords) and not bool(torch.isfinite(coords).all()):
            raise ValueError(f"{who}: {name} must be finite; got a NaN or an infinity.")
        if not self.allow_negative and coords.numel() and reads_values(coords) and coords.min() < 0:
            raise ValueError(f"{who}: {name} must be non-negative; got a minimum of {coords.min().item()}.")
        return coords if continuous else coords.long()

    # -- plain positions -> coordinates --------------------------------------------------------------------------------
    @abc.abstractmethod
    def plain_coordinates(self, pos: Tensor) -> Tensor:
        """Coordinates ``(..., A)`` of plain positions ``pos`` ``(...)`` when no table is set."""

    def continue_coordinates(self, table: Tensor, pos: Tensor) -> Tensor:
        """Coordinates ``(Bt, T, A)`` for positions ``pos`` ``(Bt|1, T)`` at or past the table's length ``L``.

        Default: raise; encodings with a natural continuation (text after the last token) override it.
        """
        who = getattr(self, "name", "") or type(self).__name__
        raise ValueError(f"{who}: position {int(pos.max())} is past the {table.shape[1]} coordinates given; give "
                         f"Positions(coordinates=...) a row for every position the model will see.")

    def resolve(self, pos: Tensor, length: int, *, batch: int | None, device: torch.device, name: str) -> Tensor:
        """Coordinates ``(B|1, T, A)`` for ``pos``: coordinates as given, or plain positions looked up / mapped.

        Plain positions of a bound view's own (validated) :class:`~posenc.Positions` are not checked again.
        """
        if isinstance(pos, Tensor) and pos.dim() == 3:
            coords = self.check_coordinates(pos, name=name)
            if coords.shape[1] != length:
                raise ValueError(f"{name} has {coords.shape[1]} positions but the sequence has {length} tokens.")
            if batch is not None and coords.shape[0] not in (1, batch):
                raise ValueError(f"{name} has batch size {coords.shape[0]} but the input has batch size {batch}.")
            if coords.device != device:
                raise ValueError(f"{name} is on {coords.device} but the input is on {device}.")
            return coords
        trusted = self.trusts(pos)
        if not trusted:
            check_positions(pos, length, name=name, batch=batch, device=device)
        table = self._coordinates
        if table is None:
            coords = self.plain_coordinates(pos)
            return coords.unsqueeze(0) if pos.dim() == 1 else coords
        table = table.to(device)
        if batch is not None and table.shape[0] not in (1, batch):
            raise ValueError(f"the coordinate table has batch size {table.shape[0]} but the input has batch size "
                             f"{batch}; give coordinates of shape (L, A) or (B, L, A).")
        n = table.shape[1]
        top = self.trusted_max(pos) if trusted else None
        if top is None and pos.numel():
            top = int(pos.max())
        if pos.numel() == 0 or top < n:
            return gather_rows(table, pos)
        pos2 = pos.unsqueeze(0) if pos.dim() == 1 else pos  # (1|B, T)
        b = max(table.shape[0], pos2.shape[0])
        pos2, table = pos2.expand(b, -1), table.expand(b, -1, -1)
        inside = gather_rows(table, pos2.clamp(max=n - 1))
        beyond = self.continue_coordinates(table, pos2)
        return torch.where((pos2 < n).unsqueeze(-1), inside, beyond)
