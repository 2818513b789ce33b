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

__version__ = "0.1.0"

# The public names load lazily (PEP 562) so that ``posenc --help`` and other torch-free paths do not import torch.
# The first time any of them is read, the whole public API is imported at once, exactly as an eager import would.
_EXPORTS = {
    "backends": ("posenc.backends", ("attention", "explain", "register_backend")),
    "base": ("posenc.base", ("EncodingInfo", "PositionalEncoding", "check_positions", "default_positions",
                             "get_encoding", "list_encodings", "register", "registered_names")),
    "rope": ("posenc.encodings.rope", ("apply_rope", "permute_projection", "rope_cos_sin", "rope_frequencies",
                                       "rope_permutation")),
    "sinusoidal": ("posenc.encodings.sinusoidal", ("sinusoidal_table",)),
    "positions": ("posenc.positions", ("Positions",)),
    "terms": ("posenc.terms", ("AttentionCall", "AttentionTerms", "LayerView", "ScoreBlock")),
    "hf": ("posenc.hf", ("from_hf_config", "to_hf_config", "to_scaled")),
    "model": ("posenc.model", ("KVCache", "Transformer", "TransformerConfig", "convert_rope_layout")),
}
_LAZY = {name for _, names in _EXPORTS.values() for name in names}


def _load_all() -> None:
    import importlib

    g = globals()
    for module_name, names in _EXPORTS.values():
        module = importlib.import_module(module_name)
        for name in names:
            g[name] = getattr(module, name)


def __getattr__(name: str):
    if name in _LAZY:
        _load_all()
        return globals()[name]
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # a submodule: posenc.attention_settings, posenc.hf, ...
    raise AttributeError(f"module 'posenc' has no attribute {name!r}")


def __dir__() -> list[str]:
    hidden = {"_EXPORTS", "_LAZY", "_load_all", "__getattr__", "__dir__"}
    return sorted((set(globals()) | _LAZY) - hidden)


__all__ = [
    "AttentionCall",
    "AttentionTerms",
    "EncodingInfo",
    "KVCache",
    "LayerView",
    "PositionalEncoding",
    "Positions",
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
    "ScoreBlock",
    "sinusoidal_table",
    "to_hf_config",
    "to_scaled",
]
