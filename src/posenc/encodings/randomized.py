"""Randomized positions around any encoding (Ruoss et al. 2023, arXiv 2305.16843)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from posenc._checks import check_int
from posenc.base import PositionalEncoding, get_encoding, register
from posenc.terms import AttentionCall, AttentionTerms, LayerView

__all__ = ["RandomizedPE"]


@register("randomized")
class RandomizedPE(PositionalEncoding):
    """Wraps any registered encoding; while training, each sequence gets random sorted positions (arXiv 2305.16843).

    For a sequence of ``T`` tokens, ``T`` distinct positions are sampled without replacement from
    ``[0, max_positions)`` and sorted, so the model sees the *order* of tokens but position values of sequences far
    longer than those it trains on. In eval mode positions are ``0..T-1`` (``sample_at_eval=True`` keeps sampling,
    which is what the paper's evaluation does for lengths up to ``max_positions``).

    Args:
        base: the registered encoding to wrap (any name but ``randomized``).
        max_positions: ``L`` in the paper, the range positions are drawn from (2048 in the paper). The wrapped
            encoding is built with ``max_seq_len = max_positions``.
        sample_at_eval: also sample positions in eval mode.
        base_options: options passed to the wrapped encoding.
    """

    family = "wrapper"
    paper = "2305.16843"

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: str = "sinusoidal", max_positions: int | None = None, sample_at_eval: bool = False,
                 base_options: dict | None = None) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if base == "randomized":
            raise ValueError("randomized: base must be another encoding, not 'randomized' itself.")
        max_positions = max(2048, max_seq_len) if max_positions is None else max_positions
        check_int(max_positions, "randomized: max_positions", minimum=max_seq_len,
                  hint=f"Positions are sampled from [0, max_positions); it must reach max_seq_len={max_seq_len}.")
        self.max_positions = max_positions
        self.sample_at_eval = bool(sample_at_eval)
        self.inner = get_encoding(base, dim=dim, n_heads=n_heads, max_seq_len=max_positions, causal=causal,
                                  **(base_options or {}))
        self.extrapolates = self.inner.extrapolates
        self.per_layer = self.inner.per_layer  # a per-layer encoding stays per layer behind the wrapper
        self.generator: torch.Generator | None = None  # set for reproducible sampling

    def make_positions(self, batch: int, length: int, *, offset: int | Tensor = 0,
                       device: torch.device | str | None = None) -> Tensor:
        """``(B, T)`` sorted random positions while training (or with ``sample_at_eval``), else ``offset + arange``."""
        if not (self.training or self.sample_at_eval):
            return self.inner.make_positions(batch, length, offset=offset, device=device)
        if isinstance(offset, Tensor) or offset:
            raise ValueError("randomized: sampled positions cover a whole sequence at once; incremental decoding "
                             "with an offset needs eval mode (model.eval()) with sample_at_eval=False.")
        if length > self.max_positions:
            raise ValueError(f"randomized: cannot sample {length} distinct positions from [0, {self.max_positions}); "
                             f"raise max_positions.")
        # argsort of uniform noise = a uniformly random permutation per row; its first T entries, sorted, are a
        # uniform T-subset of [0, L) without replacement.
        noise = torch.rand(batch, self.max_positions, generator=self.generator, device=self.generator.device
                           if self.generator is not None else "cpu")
        pos = noise.argsort(dim=-1)[:, :length].sort(dim=-1).values  # (B, T)
        return pos.to(device=device if device is not None else pos.device)

    def bind(self, positions):
        """The wrapped encoding bound to ``positions`` (its per-forward tables), behind this wrapper."""
        inner = self.inner.bind(positions)
        return self if inner is self.inner else self.bound_view(positions, inner=inner)

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        return self.inner.embed(x, pos)

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        return self.inner.rotate(q, k, q_pos, k_pos)

    def rotated_width(self, head_dim: int) -> int:
        return self.inner.rotated_width(head_dim)

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        return self.inner.bias(q_pos, k_pos)

    def score_mod(self, q_pos: Tensor, k_pos: Tensor) -> Callable | None:
        return self.inner.score_mod(q_pos, k_pos)

    def features(self, x: Tensor, pos: Tensor, *, layer: LayerView) -> dict[str, Tensor]:
        return self.inner.features(x, pos, layer=layer)

    def terms(self, call: AttentionCall) -> AttentionTerms | None:
        return self.inner.terms(call)

    def commit(self, k: Tensor, v: Tensor, features: Mapping[str, Tensor], *,
               new: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        return self.inner.commit(k, v, features, new=new)

    @property
    def uses_embed(self) -> bool:
        return self.inner.uses_embed

    @property
    def uses_rotate(self) -> bool:
        return self.inner.uses_rotate

    @property
    def uses_bias(self) -> bool:
        return self.inner.uses_bias

    @property
    def uses_terms(self) -> bool:
        return self.inner.uses_terms

    @property
    def uses_features(self) -> bool:
        return self.inner.uses_features

    @property
    def uses_commit(self) -> bool:
        return self.inner.uses_commit

    def check_length(self, pos: Tensor) -> None:
        self.inner.check_length(pos)

    def extra_repr(self) -> str:
        return f"max_positions={self.max_positions}, sample_at_eval={self.sample_at_eval}"

