"""posenc: positional encodings for Transformers behind one interface, with attention, a small model and a lab.

Shape legend (used throughout, as in SDPA and FlexAttention):

- ``B`` batch, ``T`` sequence length (``Tq`` queries, ``Tk`` keys), ``H`` query heads, ``Hkv`` key/value heads,
  ``D`` head dim, ``dim = H * D`` model width.
- token embeddings ``(B, T, dim)``; queries ``(B, H, Tq, D)``; keys and values ``(B, Hkv, Tk, D)``.
- positions: int64 ``(T,)`` shared by the batch or ``(B, T)`` per sequence (KV cache offsets, packed documents,
  randomized positions). Biases: float32 ``(H, Tq, Tk)`` or ``(B, H, Tq, Tk)``.

Quick start::

    import posenc
    pe = posenc.get_encoding("rope", dim=512, n_heads=8)
    q, k = pe.rotate(q, k, pos, pos)                  # (B, H, T, D) each
    out = posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True)
"""

from posenc.attention import attention, explain, register_backend
from posenc.base import (
    EncodingInfo,
    PositionalEncoding,
    check_positions,
    default_positions,
    get_encoding,
    list_encodings,
    register,
    registered_names,
)
from posenc.encodings.rope import apply_rope, permute_projection, rope_cos_sin, rope_frequencies, rope_permutation
from posenc.encodings.sinusoidal import sinusoidal_table
from posenc.hf import from_hf_config, to_hf_config, to_scaled
from posenc.model import KVCache, Transformer, TransformerConfig, convert_rope_layout

__version__ = "0.1.0"

__all__ = [
    "EncodingInfo",
    "KVCache",
    "PositionalEncoding",
    "Transformer",
    "TransformerConfig",
    "apply_rope",
    "attention",
    "check_positions",
    "convert_rope_layout",
    "default_positions",
    "explain",
    "from_hf_config",
    "get_encoding",
    "list_encodings",
    "permute_projection",
    "register",
    "register_backend",
    "registered_names",
    "rope_cos_sin",
    "rope_frequencies",
    "rope_permutation",
    "sinusoidal_table",
    "to_hf_config",
    "to_scaled",
]
