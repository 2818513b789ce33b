"""NoPE: no position information at all (Kazemnejad et al. 2023, arXiv 2305.19466)."""

from __future__ import annotations

from posenc.base import PositionalEncoding, register


@register("nope")
class NoPE(PositionalEncoding):
    """No positional encoding (arXiv 2305.19466): every hook is the identity.

    A bidirectional encoder without positions is exactly permutation-equivariant; a causal decoder can still infer
    positions from its mask, which is why NoPE decoders generalize surprisingly well (Kazemnejad et al. 2023).
    """

    family = "none"
    paper = "2305.19466"
    extrapolates = True
