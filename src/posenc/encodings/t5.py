"""T5's bucketed relative position bias (Raffel et al. 2020, arXiv 1910.10683).

The signed distance ``rel = key_pos - query_pos`` is mapped to one of ``num_buckets`` buckets: exact buckets for
small distances, logarithmically wider ones up to ``max_distance``, beyond which every distance shares the last
bucket. Each bucket holds one learned scalar per head. Bidirectional attention splits the buckets between keys
before and after the query; causal attention spends them all on keys at or before the query.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from posenc._checks import check_int
from posenc.base import register
from posenc.encodings._relative import PairwiseBias

__all__ = ["T5Bias", "t5_relative_position_bucket"]


def _check_bucket_settings(*, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """Validate the bucket settings; return ``max_exact`` (the number of exact buckets per direction)."""
    check_int(num_buckets, "t5: num_buckets", minimum=1)
    check_int(max_distance, "t5: max_distance", minimum=1)
    per_direction = num_buckets // 2 if bidirectional else num_buckets
    max_exact = per_direction // 2
    if max_exact < 1:
        raise ValueError(f"t5: num_buckets={num_buckets} is too small: {'bidirectional' if bidirectional else 'causal'}"
                         f" buckets need at least {4 if bidirectional else 2} (half of each direction's buckets are "
                         f"exact distances, the other half logarithmic). Hint: T5 uses num_buckets=32.")
    if max_distance <= max_exact:
        raise ValueError(f"t5: max_distance={max_distance} must exceed the {max_exact} exact buckets per direction "
                         f"(num_buckets={num_buckets}, bidirectional={bidirectional}); otherwise the logarithmic "
                         f"buckets have no range. Hint: T5 uses max_distance=128 with 32 buckets.")
    return max_exact


def t5_relative_position_bucket(rel: Tensor, *, bidirectional: bool, num_buckets: int = 32,
                                max_distance: int = 128) -> Tensor:
    """Bucket index of each relative position, exactly as T5 (Mesh TensorFlow, Hugging Face) computes it.

    Args:
        rel: int64 ``key_pos - query_pos``, any shape (negative = the key is before the query).
        bidirectional: ``True``: half the buckets for keys before the query and half for keys after it (bucket
            ``>= num_buckets // 2`` means after); ``False`` (causal): keys after the query share bucket 0 with the
            query itself.
        num_buckets: total buckets.
        max_distance: distances at or beyond it fall in the last bucket of their direction.

    Returns:
        int64 bucket indices in ``[0, num_buckets)``, shape of ``rel``.
    """
    max_exact = _check_bucket_settings(bidirectional=bidirectional, num_buckets=num_buckets,
                                       max_distance=max_distance)
    if rel.dtype.is_floating_point or rel.dtype == torch.bool:
        raise TypeError(f"t5_relative_position_bucket: rel must hold integer distances (int64); got {rel.dtype}.")
    rel = rel.long()
    if bidirectional:
        per_direction = num_buckets // 2
        offset = (rel > 0).long() * per_direction
        n = rel.abs()
    else:
        per_direction = num_buckets
        offset = torch.zeros_like(rel)
        n = (-rel).clamp(min=0)
    is_small = n < max_exact
    # Same float32 arithmetic, in the same order, as HF/Mesh TF, so bucket boundaries agree exactly. The clamp only
    # touches distances the `where` below discards (log(0) would be -inf and its cast to int64 undefined).
    log_ratio = torch.log(n.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (per_direction - max_exact)).long()
    large = large.clamp(max=per_direction - 1)
    return offset + torch.where(is_small, n, large)


@register("t5")
class T5Bias(PairwiseBias):
    """T5 relative position bias (Raffel et al. 2020, arXiv 1910.10683): a learned scalar per head and distance bucket.

    The table is an ``nn.Embedding(num_buckets, n_heads)`` named ``relative_attention_bias`` as in Hugging Face's T5,
    so a checkpoint's ``relative_attention_bias.weight`` loads directly. T5 computes the bias once in the first layer
    and shares it across all layers of the stack; in posenc every layer of a stack already calls the same ``pe``
    instance, so one table serves the whole stack exactly as in T5 (the encoder and the decoder of an
    encoder-decoder have separate stacks and so separate tables, as in T5).

    Args:
        bidirectional: bucket keys before and after the query separately (T5's encoder); defaults to
            ``not causal`` (T5's decoder uses ``False``).
        num_buckets: number of buckets (T5: 32).
        max_distance: distance at which buckets saturate (T5: 128).
    """

    paper = "1910.10683"
    extrapolates = True  # every distance past max_distance shares the last bucket

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 bidirectional: bool | None = None, num_buckets: int = 32, max_distance: int = 128) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if bidirectional is not None and not isinstance(bidirectional, bool):
            raise TypeError(f"t5: bidirectional must be True, False or None (= not causal); got {bidirectional!r}.")
        self.bidirectional = (not self.causal) if bidirectional is None else bidirectional
        _check_bucket_settings(bidirectional=self.bidirectional, num_buckets=num_buckets, max_distance=max_distance)
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, n_heads)  # (num_buckets, H)
        # HF initialises this table with std = d_model^-0.5 (T5PreTrainedModel._init_weights); nn.Embedding's
        # default N(0, 1) would swamp freshly initialised attention scores.
        nn.init.normal_(self.relative_attention_bias.weight, std=dim**-0.5)

    def buckets(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Bucket indices for broadcastable query/key positions (``rel = k - q``)."""
        return t5_relative_position_bucket(k_pos - q_pos, bidirectional=self.bidirectional,
                                           num_buckets=self.num_buckets, max_distance=self.max_distance)

    def prepare(self, q_pos: Tensor, k_pos: Tensor, dtype: torch.dtype) -> dict[str, Any]:
        return {"table": self.relative_attention_bias.weight.to(dtype), "bidirectional": self.bidirectional,
                "num_buckets": self.num_buckets, "max_distance": self.max_distance}

    @staticmethod
    def pair_bias(q: Tensor, k: Tensor, h: Tensor, p: dict[str, Any]) -> Tensor:
        bucket = t5_relative_position_bucket(k - q, bidirectional=p["bidirectional"], num_buckets=p["num_buckets"],
                                             max_distance=p["max_distance"])
        return p["table"][bucket, h]

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, bidirectional={self.bidirectional}, num_buckets={self.num_buckets}, "
                f"max_distance={self.max_distance}")
