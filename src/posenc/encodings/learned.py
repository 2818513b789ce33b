"""Learned absolute position embeddings, BERT / GPT-2 style (Devlin et al. 2018, arXiv 1810.04805)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc._checks import check_int
from posenc.base import PositionalEncoding, check_positions, register

__all__ = ["LearnedPE"]


@register("learned")
class LearnedPE(PositionalEncoding):
    """A trainable ``(max_seq_len, dim)`` table added to token embeddings (arXiv 1810.04805).

    Not defined past the table: positions ``>= max_seq_len`` raise. To run at a longer length, stretch the table
    with :meth:`interpolate_` (position interpolation of the learned vectors, as ViT does for new resolutions).

    Args:
        init_std: standard deviation of the normal initialisation (0.02 as in BERT and GPT-2).
    """

    family = "absolute"
    paper = "1810.04805"
    extrapolates = False

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 init_std: float = 0.02) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        self.weight = nn.Parameter(torch.randn(max_seq_len, dim) * init_std)  # (max_seq_len, dim)

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        check_positions(pos, x.shape[-2], batch=x.shape[0], device=x.device)
        self.check_length(pos)
        return x + F.embedding(pos, self.weight).to(x.dtype)  # (B, T, dim)

    def _extend_hint(self) -> str:
        return " or stretch the learned table with pe.interpolate_(new_length)"

    @torch.no_grad()
    def interpolate_(self, new_length: int, *, mode: str = "linear") -> "LearnedPE":
        """Resize the table in place to ``new_length`` rows by interpolating between learned vectors.

        Row ``j`` of the new table is the old table read at ``j * (L_old - 1) / (L_new - 1)`` (endpoints kept), so
        the first and last learned positions are preserved and everything in between is stretched evenly.

        Args:
            new_length: rows of the new table (> 1).
            mode: ``"linear"`` or ``"nearest"``.
        """
        check_int(new_length, "learned.interpolate_: new_length", minimum=2)
        if mode not in ("linear", "nearest"):
            raise ValueError(f"learned.interpolate_: mode must be 'linear' or 'nearest'; got {mode!r}.")
        old = self.weight.detach().float().t().unsqueeze(0)  # (1, dim, L_old)
        kwargs = {"align_corners": True} if mode == "linear" else {}
        new = F.interpolate(old, size=new_length, mode=mode, **kwargs)[0].t()  # (L_new, dim)
        self.weight = nn.Parameter(new.to(self.weight.dtype).contiguous(), requires_grad=self.weight.requires_grad)
        self.max_seq_len = new_length
        return self
