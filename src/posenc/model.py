"""A small pre-norm Transformer that takes any registered positional encoding by name.

Three kinds share one block: ``"encoder"`` (bidirectional), ``"decoder"`` (causal LM, KV cache, ``generate``) and
``"encoder_decoder"`` (a bidirectional encoder, a causal decoder with cross-attention). The encoding enters at its
hooks only (``embed`` after the token embedding, ``rotate`` on q/k, ``bias``/``terms`` inside
:func:`posenc.attention`); cross-attention uses no positional encoding, as in T5 and the original Transformer.

Positions are explicit: each stack builds one :class:`posenc.Positions` per forward (the given or default token
positions, the KV cache's key positions, any structure such as a coordinate table or a graph), validates it once, binds
its encodings to it (:meth:`posenc.PositionalEncoding.bind`) and passes it to every layer.

Example:
    >>> cfg = TransformerConfig(kind="decoder", vocab_size=256, dim=64, n_heads=4, encoding="rope")
    >>> model = Transformer(cfg)
    >>> logits = model(torch.randint(0, 256, (2, 10)))  # (B, T, vocab)
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc._checks import check_int, check_number, is_int, reads_values
from posenc._io import DamagedFileError, atomic_write_bytes, checked_bytes, read_checked
from posenc.backends import attention
from posenc.base import PositionalEncoding, get_encoding
from posenc.encodings.rope import LAYOUTS, RoPE, permute_projection
from posenc.positions import Positions
from posenc.terms import LayerView

__all__ = ["KVCache", "Transformer", "TransformerConfig", "convert_rope_layout"]

KINDS = ("encoder", "decoder", "encoder_decoder")


@dataclass
class TransformerConfig:
    """Configuration of :class:`Transformer`; every field has a default for a tiny CPU model."""

    kind: str = "decoder"  # "encoder" (bidirectional), "decoder" (causal LM) or "encoder_decoder"
    vocab_size: int = 256  # tokens (bytes by default)
    dim: int = 128  # model width
    n_layers: int = 2  # blocks (encoder blocks for "encoder_decoder")
    n_decoder_layers: int | None = None  # decoder blocks of "encoder_decoder" (default: n_layers)
    n_heads: int = 4  # query heads; head_dim = dim // n_heads
    n_kv_heads: int | None = None  # key/value heads for grouped-query attention (default: n_heads)
    ffn_mult: float = 4.0  # feed-forward hidden width = ffn_mult * dim
    max_seq_len: int = 256  # the length the encoding is built for (learned tables have this many rows)
    encoding: str = "rope"  # any name in posenc.list_encodings()
    encoding_options: dict = field(default_factory=dict)  # passed to posenc.get_encoding
    # {layer index: {"encoding": name, **options}}: layers whose attention uses another (rotate/bias) encoding than
    # `encoding`, e.g. Llama 4's NoPE layers (posenc.encodings.irope.irope_config builds it); every stack
    layer_encodings: dict = field(default_factory=dict)
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    dropout: float = 0.0  # on attention and feed-forward outputs
    tie_embeddings: bool = False  # output head shares the token embedding matrix (logits scaled by dim**-0.5)
    attention_backend: str = "auto"  # passed to posenc.attention

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"TransformerConfig.kind must be one of {KINDS}; got {self.kind!r}.")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len"):
            value = getattr(self, name)
            check_int(value, f"TransformerConfig.{name}", minimum=1)
        if self.dim % self.n_heads:
            raise ValueError(f"TransformerConfig: dim={self.dim} must be divisible by n_heads={self.n_heads}.")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"TransformerConfig: n_heads={self.n_heads} must be a multiple of n_kv_heads={kv}.")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"TransformerConfig.norm must be 'layernorm' or 'rmsnorm'; got {self.norm!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TransformerConfig.dropout must be in [0, 1); got {self.dropout}.")
        if not isinstance(self.encoding_options, dict):
            raise TypeError(f"TransformerConfig.encoding_options must be a dict; got {type(self.encoding_options)}.")
        layers = max(self.n_layers, self.n_decoder_layers or 0)
        for i, spec in (self.layer_encodings.items() if isinstance(self.layer_encodings, dict) else [(None, None)]):
            if not is_int(i) or not 0 <= i < layers or not isinstance(spec, dict) \
                    or not isinstance(spec.get("encoding"), str):
                raise ValueError(f"TransformerConfig.layer_encodings must map layer indices in [0, {layers}) to "
                                 f"dicts {{'encoding': name, **options}}; got {i!r}: {spec!r}.")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


# -- KV cache ----------------------------------------------------------------------------------------------------------
@dataclass
class LayerCache:
    """One attention layer's cache: its keys and values, and the features its encoding keeps beside them."""

    k: Tensor | None = None  # (B, Hkv, T_cached, D): rotated once, as the encoding's commit() left them
    v: Tensor | None = None  # (B, Hkv, T_cached, Dv)
    features: dict = field(default_factory=dict)  # name -> (B|1, X, T_cached, F): the cached tokens' pe.features
    cross_k: Tensor | None = None  # (B, Hkv, S, D) encoder memory projected once
    cross_v: Tensor | None = None
    # k and v may be the first T_cached slots of larger buffers (see _append_kv): decoding then writes each new
    # token into the next slot instead of copying every cached key. ``length`` is a box shared by every cache made
    # from the same buffers, holding how many slots the latest successful call filled: a cache may write past its k
    # only while it is that latest one (an older cache that a user kept copies instead, so it never overwrites).
    buffers: tuple[Tensor, Tensor, list[int]] | None = field(default=None, repr=False, compare=False)


@dataclass
class KVCache:
    """Keys/values of the tokens seen so far, per layer, and their positions (for bias encodings).

    A model reads the cache and writes it back only once a call has succeeded: a call refused for bad input leaves
    it as it was. ``offset`` counts cached tokens. New tokens given no positions continue each sequence where its
    positions stopped (``next_pos``: one past the last cached position of each row), so a packed prefill or one at
    ``arange(3, 7)`` decodes on from its own last position. A cache of one sequence (a shared prompt) broadcasts to
    any batch on the next call; other batch changes are refused. The structure of the first call that gives one
    (``Positions(coordinates=...)``, ...) is kept for the later calls, so decoding reads the same coordinate table
    or graph as the prompt.
    """

    layers: list[LayerCache] = field(default_factory=list)
    k_pos: Tensor | None = None  # (T_cached,) or (B, T_cached) int64
    offset: int = 0
    memory_mask: Tensor | None = None  # encoder padding mask for cross-attention (encoder-decoder)
    max_pos: int | None = None  # the largest cached key position (validated when it was added)
    structure: dict = field(default_factory=dict)  # Positions.structure of the first call that gave one
    segment_ids: Tensor | None = None  # (B, T_cached) segment ids of the cached keys, when given
    next_pos: Tensor | None = None  # () or (B,) int64: where each sequence's positions continue (last + 1)

    @property
    def batch(self) -> int | None:
        """How many sequences the cache holds (``None`` while it holds none)."""
        for layer in self.layers:
            for t in (layer.k, layer.cross_k):
                if t is not None:
                    return t.shape[0]
        return None

    def layer(self, i: int) -> LayerCache:
        """Layer ``i``'s cache (an empty one for a layer that has cached nothing yet); reading never changes it."""
        return self.layers[i] if i < len(self.layers) else LayerCache()

    def broadcast_to(self, batch: int) -> KVCache:
        """This cache for a call of ``batch`` sequences: itself, or (for a one-sequence cache) a broadcast copy.

        Raises ``ValueError`` for any other change of batch size. The copy shares storage (expanded views).
        """
        held = self.batch
        if held is None or held == batch:
            return self
        if held != 1:
            raise ValueError(f"the KV cache holds {held} sequences but this call has {batch}; a cache of one sequence "
                             f"(a shared prompt) broadcasts to any batch, other changes are ambiguous. Start a new "
                             f"KVCache(), or give all {held} sequences.")

        def grow(t):
            return None if t is None else t.expand(batch, *t.shape[1:])

        layers = [LayerCache(grow(c.k), grow(c.v), {name: grow(f) for name, f in c.features.items()},
                             grow(c.cross_k), grow(c.cross_v)) for c in self.layers]
        k_pos = self.k_pos if self.k_pos is None or self.k_pos.dim() == 1 else grow(self.k_pos)
        next_pos = self.next_pos if self.next_pos is None or self.next_pos.dim() == 0 else grow(self.next_pos)
        memory_mask = None if self.memory_mask is None else grow(self.memory_mask)
        return dataclasses.replace(self, layers=layers, k_pos=k_pos, segment_ids=grow(self.segment_ids),
                                   next_pos=next_pos, memory_mask=memory_mask)


def _cat_positions(old: Tensor | None, new: Tensor, batch: int) -> Tensor:
    if old is None:
        return new
    if old.dim() == new.dim() == 1:
        return torch.cat((old, new))
    return torch.cat((old.expand(batch, -1) if old.dim() == 1 else old,
                      new.expand(batch, -1) if new.dim() == 1 else new), dim=-1)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


# -- blocks ------------------------------------------------------------------------------------------------------------
def _norm(cfg: TransformerConfig) -> nn.Module:
    return nn.LayerNorm(cfg.dim) if cfg.norm == "layernorm" else nn.RMSNorm(cfg.dim)


class Attention(nn.Module):
    """Multi-head (grouped-query) attention with positional hooks; ``cross=True`` attends to encoder memory.

    ``forward`` returns the output and, when given a layer cache, the layer's new cache (what the encoding's
    ``commit`` keeps); it never changes the cache it reads.
    """

    def __init__(self, cfg: TransformerConfig, *, index: int = 0, cross: bool = False) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads or cfg.n_heads, cfg.head_dim
        self.index = index
        self.cross = cross
        self.q_proj = nn.Linear(cfg.dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.dim, bias=False)
        self.dropout = cfg.dropout
        self.backend = cfg.attention_backend

    def _heads(self, x: Tensor, n: int) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)  # (B, T, n*D) -> (B, n, T, D)

    def _project_q(self, x: Tensor) -> Tensor:
        return self.q_proj(x).unflatten(-1, (self.n_heads, self.head_dim))  # (..., dim) -> (..., H, D)

    def _project_k(self, x: Tensor) -> Tensor:
        return self.k_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim))  # (..., dim) -> (..., Hkv, D)

    def view(self) -> LayerView:
        """What an encoding may read of this layer (:class:`posenc.LayerView`)."""
        return LayerView(self.index, self.n_heads, self.n_kv_heads, self.head_dim, self._project_q, self._project_k)

    def forward(self, x: Tensor, *, pe: PositionalEncoding | None, positions: Positions, causal: bool,
                attn_mask: Tensor | None, cache: LayerCache | None,
                memory: Tensor | None = None) -> tuple[Tensor, LayerCache | None]:
        b, t, _ = x.shape
        q = self._heads(self.q_proj(x), self.n_heads)  # (B, H, T, D)
        if self.cross:
            new_cache = None
            if cache is not None and cache.cross_k is not None:
                k, v = cache.cross_k, cache.cross_v
            else:
                k = self._heads(self.k_proj(memory), self.n_kv_heads)  # (B, Hkv, S, D)
                v = self._heads(self.v_proj(memory), self.n_kv_heads)
            if cache is not None:
                new_cache = dataclasses.replace(cache, cross_k=k, cross_v=v)
            out = attention(q, k, v, None, attn_mask=attn_mask, backend=self.backend)
        else:
            k = self._heads(self.k_proj(x), self.n_kv_heads)  # (B, Hkv, T, D)
            v = self._heads(self.v_proj(x), self.n_kv_heads)
            layer = self.view()
            features = {}
            if pe is not None and pe.uses_features:
                features = pe.features(x, positions.pos, layer=layer)  # name -> (B, X, T, F)
            if pe is not None and pe.uses_rotate:
                pos = positions.pos
                q, k = pe.rotate(q, k, pos, pos)  # keys are cached rotated, so each is rotated exactly once
            buffers = None
            if cache is not None and cache.k is not None:
                keeps = pe is None or not pe.uses_commit  # a commit may rewrite cached keys: plain tensors then
                k, v, buffers = _append_kv(cache, k, v, preallocate=keeps)  # (B, Hkv, T_all, D)
                features = _cat_features(cache.features, features)
            out = attention(q, k, v, pe, positions=positions, causal=causal, attn_mask=attn_mask,
                            backend=self.backend, features=features, layer=layer)
            new_cache = None
            if cache is not None:
                if pe is not None and pe.uses_commit:
                    k, v, features = _checked_commit(pe, k, v, features, t, attn_mask)
                    buffers = None
                new_cache = dataclasses.replace(cache, k=k, v=v, features=dict(features), buffers=buffers)
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)  # (B, H, T, D) -> (B, T, H*D)
        out = self.o_proj(out)
        if self.dropout and self.training:
            out = F.dropout(out, self.dropout)
        return out, new_cache


def _append_kv(cache: LayerCache, k: Tensor, v: Tensor, *,
               preallocate: bool) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, list[int]] | None]:
    """Every key and value, the cached ones first: ``(B, Hkv, T_cached + T, D)``, and the buffers holding them.

    Writes ``k``, ``v`` into the free slots of the cache's buffers when it safely can: no autograd through them
    (no gradient is recorded, so writing in place cannot invalidate a saved tensor), outside ``torch.compile``, the
    same batch, dtype and device, and this cache the latest made from its buffers (see :class:`LayerCache`). When
    the buffers are full it moves to new ones a quarter larger (at least 256 slots): amortised O(1) per token,
    where concatenating copies every cached key at every step. Otherwise (or with ``preallocate=False``) it
    concatenates, as before. Slots past the cache's own length are never read, so a call that fails after writing
    them leaves the cache as it was.
    """
    old_k, old_v = cache.k, cache.v
    cached, new = old_k.shape[2], k.shape[2]
    if not preallocate or (torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or old_k.requires_grad
                                                         or old_v.requires_grad)) \
            or torch.compiler.is_compiling() or old_k.shape[0] != k.shape[0] or old_k.dtype != k.dtype \
            or old_v.dtype != v.dtype or old_k.device != k.device:
        return torch.cat((old_k, k), dim=2), torch.cat((old_v, v), dim=2), None
    bufs = cache.buffers
    if bufs is not None:
        k_buf, v_buf, length = bufs
        usable = (length[0] == cached and k_buf.shape[2] >= cached + new and k_buf.shape[0] == k.shape[0]
                  and k_buf.shape[3] == k.shape[3] and v_buf.shape[3] == v.shape[3]
                  and (torch.is_inference_mode_enabled() or not k_buf.is_inference()))
        if usable:
            k_buf[:, :, cached:cached + new] = k
            v_buf[:, :, cached:cached + new] = v
            return k_buf[:, :, :cached + new], v_buf[:, :, :cached + new], bufs
    size = max(256, math.ceil(1.25 * (cached + new)))
    k_buf = old_k.new_empty((*old_k.shape[:2], size, old_k.shape[3]))
    v_buf = old_v.new_empty((*old_v.shape[:2], size, old_v.shape[3]))
    k_buf[:, :, :cached], v_buf[:, :, :cached] = old_k, old_v
    k_buf[:, :, cached:cached + new], v_buf[:, :, cached:cached + new] = k, v
    return k_buf[:, :, :cached + new], v_buf[:, :, :cached + new], (k_buf, v_buf, [-1])


def _cat_features(cached: dict, new: dict) -> dict:
    """Every key's features: the cached ones, then the call's own, on the time axis (dim 2), like keys."""
    if set(cached) != set(new):
        raise ValueError(f"the KV cache holds features {sorted(cached)} but this call's encoding made {sorted(new)}; "
                         f"a cache belongs to one model and encoding.")
    # a batch-shared (1, ...) cache grows to the call's batch; expanding to the same size is a no-op view
    return {name: torch.cat((cached[name].expand(new[name].shape[0], *cached[name].shape[1:]), new[name]), dim=2)
            for name in new}


def _checked_commit(pe: PositionalEncoding, k: Tensor, v: Tensor, features: dict, new: int,
                    attn_mask: Tensor | None):
    """``pe.commit(...)``, refused unless it keeps every key (the cache's positions must still describe them)."""
    k2, v2, f2 = pe.commit(k, v, features, new=new, attn_mask=attn_mask)
    if k2.shape != k.shape or v2.shape != v.shape or set(f2) != set(features) or \
            any(f2[n].shape[2] != features[n].shape[2] for n in features):
        raise ValueError(f"{pe.name}.commit must return every key's k, v and features with their shapes "
                         f"(k {tuple(k.shape)}, v {tuple(v.shape)}); got k {tuple(k2.shape)}, v {tuple(v2.shape)}.")
    return k2, v2, f2


class Block(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` [``+ cross_attn(norm(x), memory)``] ``+ ffn(norm(x))``."""

    def __init__(self, cfg: TransformerConfig, *, index: int = 0, cross: bool = False) -> None:
        super().__init__()
        self.attn_norm, self.attn = _norm(cfg), Attention(cfg, index=index)
        self.cross_norm = _norm(cfg) if cross else None
        self.cross_attn = Attention(cfg, index=index, cross=True) if cross else None
        hidden = int(cfg.ffn_mult * cfg.dim)
        self.ffn_norm = _norm(cfg)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, hidden, bias=False), nn.GELU(),
                                 nn.Linear(hidden, cfg.dim, bias=False))
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, *, pe: PositionalEncoding, positions: Positions, causal: bool,
                attn_mask: Tensor | None, cache: LayerCache | None, memory: Tensor | None,
                memory_mask: Tensor | None) -> tuple[Tensor, LayerCache | None]:
        """``x`` ``(B, T, dim)`` -> the block's output and the layer's new cache (``None`` without a cache)."""
        out, cache = self.attn(self.attn_norm(x), pe=pe, positions=positions, causal=causal, attn_mask=attn_mask,
                               cache=cache)
        x = x + out
        if self.cross_attn is not None:
            out, cache = self.cross_attn(self.cross_norm(x), pe=None, positions=positions, causal=False,
                                         attn_mask=memory_mask, cache=cache, memory=memory)
            x = x + out
        out = self.ffn(self.ffn_norm(x))
        if self.dropout and self.training:
            out = F.dropout(out, self.dropout)
        return x + out, cache


class Stack(nn.Module):
    """Blocks sharing one positional encoding (as T5 shares its bias table across layers), and a final norm.

    An encoding class with ``per_layer = True`` (FoX's per-layer gates) gets one instance per layer instead:
    ``pe`` serves layer 0 (and makes the stack's positions), ``layer_pe[str(i)]`` layer ``i``. Layers named in
    ``cfg.layer_encodings`` get their own encoding too.
    """

    def __init__(self, cfg: TransformerConfig, n_layers: int, *, causal: bool, cross: bool) -> None:
        super().__init__()
        self.causal = causal
        self.pe = get_encoding(cfg.encoding, dim=cfg.dim, n_heads=cfg.n_heads, max_seq_len=cfg.max_seq_len,
                               causal=causal, **cfg.encoding_options)
        if self.pe.per_layer and self.pe.uses_embed:
            raise ValueError(f"TransformerConfig.encoding {cfg.encoding!r} is per layer (one instance per attention "
                             f"layer) but also adds to the token embeddings, which a stack does once.")
        self.blocks = nn.ModuleList(Block(cfg, index=i, cross=cross) for i in range(n_layers))
        self.norm = _norm(cfg)
        self.layer_pe = nn.ModuleDict()  # layers with an encoding of their own (keys: layer index as str)
        for i in range(n_layers):
            spec = cfg.layer_encodings.get(i)
            if spec is None:
                if i > 0 and self.pe.per_layer:  # one instance per layer, instead of the stack's
                    self.layer_pe[str(i)] = get_encoding(cfg.encoding, dim=cfg.dim, n_heads=cfg.n_heads,
                                                         max_seq_len=cfg.max_seq_len, causal=causal,
                                                         **cfg.encoding_options)
                continue
            options = {k: v for k, v in spec.items() if k != "encoding"}
            pe = get_encoding(spec["encoding"], dim=cfg.dim, n_heads=cfg.n_heads, max_seq_len=cfg.max_seq_len,
                              causal=causal, **options)
            if pe.uses_embed:
                raise ValueError(f"TransformerConfig.layer_encodings[{i}]: {spec['encoding']!r} adds to the "
                                 f"token embeddings, which the stack does once; a layer's encoding may only "
                                 f"rotate q/k or act inside attention.")
            self.layer_pe[str(i)] = pe

    def encodings(self) -> list[PositionalEncoding]:
        """The encoding of each layer, in order (the stack's own where a layer has none of its own)."""
        return [self.layer_pe[str(i)] if str(i) in self.layer_pe else self.pe for i in range(len(self.blocks))]

    def forward(self, x: Tensor, *, positions: Tensor | Positions | None, padding_mask: Tensor | None,
                cache: KVCache | None, memory: Tensor | None = None, memory_mask: Tensor | None = None) -> Tensor:
        """``x`` ``(B, T, dim)`` -> ``(B, T, dim)``. A cache is read, and written back only after every layer ran."""
        b, t, _ = x.shape
        cached = None if cache is None else cache.broadcast_to(b)
        p = self.positions(positions, b, t, x.device, cached)
        pe = self.pe.bind(p)  # this forward's encoding: its structure, tables and trust in p, for every layer
        if pe.uses_embed:
            x = pe.embed(x, p.pos)
        else:
            pe.check_length(p.pos)
        layer_pe = {i: pe_i.bind(p) for i, pe_i in self.layer_pe.items()}
        for pe_i in layer_pe.values():
            pe_i.check_length(p.pos)
        attn_mask, segment_ids = _attention_mask(padding_mask, p, cached, b)
        new_layers = []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, pe=layer_pe.get(str(i), pe), positions=p, causal=self.causal,
                                   attn_mask=attn_mask, cache=cached.layer(i) if cached is not None else None,
                                   memory=memory, memory_mask=memory_mask)
            new_layers.append(layer_cache)
        x = self.norm(x)
        if cache is not None:  # the call succeeded: now the cache moves on
            _advance(cache, cached, p, new_layers, segment_ids, t)
        return x

    def positions(self, positions: Tensor | Positions | None, batch: int, length: int, device: torch.device,
                  cache: KVCache | None = None) -> Positions:
        """This forward's validated :class:`~posenc.Positions`: defaults filled in, the cache's keys before its own.

        ``positions`` as given to the model (a tensor, a ``Positions`` or ``None``); ``pos`` defaults to the
        encoding's :meth:`~posenc.PositionalEncoding.make_positions`, continuing each cached sequence where its
        positions stopped. A cache's structure (of the first call that gave one) is used when none is given. Reads
        the cache; never changes it.
        """
        p = Positions.of(positions)
        if cache is not None and not p.structure and cache.structure:
            p = p.replace(**cache.structure)
        if p.pos is None:
            start = cache.next_pos if cache is not None and cache.next_pos is not None else 0
            p = p.replace(pos=self.pe.make_positions(batch, length, offset=start, device=device))
        p = p.validate(length, batch=batch, device=device)
        if cache is None or cache.k_pos is None:
            return p.with_keys(p.pos, p.max_pos)
        return p.with_keys(_cat_positions(cache.k_pos, p.pos, batch), _max(cache.max_pos, p.max_pos))


def _advance(cache: KVCache, cached: KVCache, p: Positions, layers: list[LayerCache], segment_ids: Tensor | None,
             length: int) -> None:
    """Write a successful call's state into ``cache`` (``cached``: what the call read, maybe broadcast)."""
    cache.layers = layers
    for layer in layers:  # these caches are now the latest made from their buffers: they may write past their k
        if layer is not None and layer.buffers is not None:
            layer.buffers[2][0] = layer.k.shape[2]
    cache.k_pos = p.key_pos
    cache.max_pos = p.max_key_pos
    cache.offset = cached.offset + length
    if length:
        cache.next_pos = p.pos[..., -1] + 1  # () or (B,): where each sequence continues
    cache.segment_ids = segment_ids
    cache.memory_mask = cached.memory_mask
    if p.structure:
        cache.structure = p.structure


def _check_padding_mask(mask: Tensor, name: str, batch: int, keys: int, device: torch.device) -> None:
    """Raise unless ``mask`` is a bool ``(B|1, keys)`` tensor on ``device`` (True = a real token).

    A float mask would reach attention as an *additive* mask: a 0/1 padding mask would add 1 to the real tokens'
    logits and 0 to the padding's, which hides nothing.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"{name} must be a bool tensor (B, T_keys), True for real tokens; got {got}. Hint: "
                        f"{name}.bool() (or {name} != 0) for a 0/1 mask.")
    if mask.dim() != 2 or mask.shape[0] not in (1, batch) or mask.shape[1] != keys:
        raise ValueError(f"{name} must have shape (B, T_keys) = ({batch}, {keys}) (with a KV cache, T_keys counts the "
                         f"cached tokens too); got {tuple(mask.shape)}.")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but the input is on {device}; move it with {name}.to(x.device).")


def _attention_mask(padding_mask: Tensor | None, p: Positions, cache: KVCache | None,
                    batch: int) -> tuple[Tensor | None, Tensor | None]:
    """Bool ``(B, 1, 1|T, T_keys)`` (True = attend) from the padding mask and the packed documents' segment ids.

    Padding and packing both restrict what a token sees, so the two masks are AND-ed. Also returns the segment ids
    of every key ``(B, T_keys)`` (the cache's, then this call's), or ``None`` when there are none. Pure.
    """
    if padding_mask is not None:
        _check_padding_mask(padding_mask, "padding_mask", batch, p.key_pos.shape[-1], p.pos.device)
    mask = None if padding_mask is None else padding_mask[:, None, None, :]  # (B, T_keys) -> (B, 1, 1, T_keys)
    seg = p.segment_ids
    if seg is None and (cache is None or cache.segment_ids is None):
        return mask, None
    t = p.pos.shape[-1]
    if seg is None:  # a decode step continues each sequence's last segment
        seg = cache.segment_ids[:, -1:].expand(-1, t)
    seg = seg.expand(batch, t)  # (1, T) segment ids are shared by the batch
    keys = seg
    if cache is not None:
        if cache.segment_ids is None and cache.offset > 0:
            raise ValueError("segment_ids: the KV cache holds tokens without segment ids; give segment_ids from the "
                             "first call on, or none at all.")
        if cache.segment_ids is not None:
            keys = torch.cat((cache.segment_ids, seg), dim=-1)  # (B, T_keys)
    same = seg[:, None, :, None] == keys[:, None, None, :]  # (B, 1, T, T_keys)
    return (same if mask is None else mask & same), keys


# -- model -------------------------------------------------------------------------------------------------------------
class Transformer(nn.Module):
    """Encoder, decoder or encoder-decoder Transformer with any registered positional encoding.

    Shapes: tokens ``(B, T)`` int64; positions ``(T,)`` or ``(B, T)`` int64; logits ``(B, T, vocab_size)``.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(cfg, TransformerConfig):
            raise TypeError(f"Transformer takes a TransformerConfig; got {type(cfg).__name__}.")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        if cfg.kind == "encoder_decoder":
            self.encoder = Stack(cfg, cfg.n_layers, causal=False, cross=False)
            self.decoder = Stack(cfg, cfg.n_decoder_layers or cfg.n_layers, causal=True, cross=True)
        else:
            self.encoder = None
            self.decoder = Stack(cfg, cfg.n_layers, causal=cfg.kind == "decoder", cross=False)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight

    def reset_parameters(self) -> None:
        """Initialise the model's own layers so that every kind starts at a loss of about ``ln(vocab_size)``.

        The recipe (checked against x-transformers on the same batches: ``tests/test_peer_parity.py``):

        - token embedding ``N(0, 1/dim)`` times ``sqrt(dim)`` in :meth:`_embed` (Vaswani et al.'s scale): entries of
          unit variance, on par with the sinusoidal table an absolute encoding adds;
        - every projection ``N(0, 1/fan_in)``, so a block's branch is as large as its (normalised) input: blocks
          change the unit-RMS stream from the first step instead of adding almost nothing to it (the old std 0.02
          made each block ~1/20 of the stream at width 128). GPT-2's extra ``1/sqrt(2 * layers)`` on the residual
          outputs was tried and measured no better at the lab's depths (``decoder_copy``, 3 seeds: 0.90 vs 0.92
          mean exact match), so it is left out, as in x-transformers and PyTorch's defaults;
        - an untied head ``N(0, 1/dim**2)``: the initial logits are ``O(dim**-0.5)``, so the initial loss is
          ``ln(vocab_size)``. A head tied to the embedding would instead give the *current* token a logit of
          ``~sqrt(dim)`` (the residual stream still holds its embedding), so an untrained model predicts "repeat
          the input" with near certainty, starts far above ``ln(vocab_size)`` and on copy tasks may never leave
          that basin (measured: 0% vs 92% exact match on ``decoder_copy``). ``tie_embeddings=True`` stays
          available; it scales the logits by ``dim**-0.5`` as T5 and x-transformers do.

        Every positional encoding's own parameters (the stack's, each layer's) keep the initialisation their module
        gives them (a paper's, such as FoX's gate bias, or PyTorch's default): the model does not reach into them.
        """
        cfg = self.cfg
        nn.init.normal_(self.tok_emb.weight, std=cfg.dim**-0.5)
        pes = {id(p) for m in self.modules() if isinstance(m, PositionalEncoding) for p in m.parameters()}
        for module in self.modules():
            if not isinstance(module, nn.Linear) or module is self.head or id(module.weight) in pes:
                continue
            nn.init.normal_(module.weight, std=module.in_features**-0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.head.weight, std=1.0 / cfg.dim)

    @property
    def pe(self) -> PositionalEncoding:
        """The positional encoding of the main stack (the decoder's, or the encoder's for an encoder)."""
        return self.decoder.pe

    def _embed(self, tokens: Tensor, name: str) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"{name} must be an integer tensor of token ids (B, T); got "
                            f"{tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__}.")
        if tokens.dim() != 2:
            raise ValueError(f"{name} must have shape (B, T); got {tuple(tokens.shape)}. Hint: tokens[None] adds "
                             f"a batch dimension.")
        if tokens.numel() and reads_values(tokens) and (
                int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size):
            raise ValueError(f"{name} ids must lie in [0, vocab_size={self.cfg.vocab_size}); got range "
                             f"[{int(tokens.min())}, {int(tokens.max())}].")
        return self.tok_emb(tokens) * math.sqrt(self.cfg.dim)  # (B, T, dim)

    def encode(self, src: Tensor, *, positions: Tensor | Positions | None = None,
               padding_mask: Tensor | None = None) -> Tensor:
        """Run the encoder (or the whole model for ``kind="encoder"``): ``(B, S)`` -> hidden ``(B, S, dim)``."""
        stack = self.encoder if self.encoder is not None else self.decoder
        if self.cfg.kind == "decoder":
            raise ValueError("encode() is for 'encoder' and 'encoder_decoder' models; a decoder uses forward().")
        return stack(self._embed(src, "src"), positions=positions, padding_mask=padding_mask, cache=None)

    def decode(self, tokens: Tensor, memory: Tensor | None = None, *, positions: Tensor | Positions | None = None,
               padding_mask: Tensor | None = None, memory_padding_mask: Tensor | None = None,
               cache: KVCache | None = None) -> Tensor:
        """Run the (causal) decoder stack: ``(B, T)`` -> hidden ``(B, T, dim)``; ``memory`` for cross-attention."""
        memory_mask = None
        if self.cfg.kind == "encoder_decoder":
            if memory is None:
                raise ValueError("an encoder_decoder model needs the encoder's memory: decode(tgt, model.encode(src)).")
            if memory_padding_mask is not None:
                _check_padding_mask(memory_padding_mask, "memory_padding_mask", memory.shape[0], memory.shape[1],
                                    memory.device)
                memory_mask = memory_padding_mask[:, None, None, :]  # (B, 1, 1, S)
        return self.decoder(self._embed(tokens, "tokens"), positions=positions, padding_mask=padding_mask,
                            cache=cache, memory=memory, memory_mask=memory_mask)

    def forward(self, tokens: Tensor, tgt: Tensor | None = None, *, positions: Tensor | Positions | None = None,
                tgt_positions: Tensor | Positions | None = None, padding_mask: Tensor | None = None,
                tgt_padding_mask: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """Logits ``(B, T, vocab_size)``.

        - ``encoder``: ``model(tokens, padding_mask=...)``, logits for every input token.
        - ``decoder``: ``model(tokens, cache=...)``, next-token logits; with a cache, only the new tokens are given.
        - ``encoder_decoder``: ``model(src, tgt)``, logits for every target token.

        Args:
            tokens: ``(B, T)`` token ids (the source for encoder-decoder models).
            tgt: ``(B, T_tgt)`` target ids, only for encoder-decoder models.
            positions: explicit positions ``(T,)`` or ``(B, T)`` (default ``offset + arange(T)``), or a
                :class:`posenc.Positions` carrying them and any structure the encoding reads (a coordinate table, a
                graph, token ids, segment ids of packed documents).
            tgt_positions: the same for the target of an encoder-decoder model.
            padding_mask: bool ``(B, T_keys)``, True for real tokens.
            tgt_padding_mask: the same for the target of an encoder-decoder model.
            cache: a :class:`KVCache` for incremental decoding (decoder and the decoder of encoder-decoder).
        """
        if self.cfg.kind == "encoder_decoder":
            if tgt is None:
                raise ValueError("an encoder_decoder model takes model(src, tgt).")
            memory = self.encode(tokens, positions=positions, padding_mask=padding_mask)
            hidden = self.decode(tgt, memory, positions=tgt_positions, padding_mask=tgt_padding_mask,
                                 memory_padding_mask=padding_mask, cache=cache)
        else:
            if tgt is not None or tgt_positions is not None or tgt_padding_mask is not None:
                raise ValueError(f"tgt arguments are only for encoder_decoder models; this is a {self.cfg.kind}.")
            if cache is not None and self.cfg.kind == "encoder":
                raise ValueError("a bidirectional encoder has no KV cache: every token attends to every other.")
            hidden = self.decoder(self._embed(tokens, "tokens"), positions=positions, padding_mask=padding_mask,
                                  cache=cache)
        return self.logits(hidden)

    def logits(self, hidden: Tensor) -> Tensor:
        """The output head: hidden ``(B, T, dim)`` -> logits ``(B, T, vocab_size)`` (tied heads scaled by dim**-0.5)."""
        if self.cfg.tie_embeddings:
            return self.head(hidden * self.cfg.dim**-0.5)
        return self.head(hidden)

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, *, src: Tensor | None = None,
                 src_padding_mask: Tensor | None = None, temperature: float = 0.0, top_k: int | None = None,
                 eos_id: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Extend ``prompt`` ``(B, T0)`` by up to ``max_new_tokens`` tokens with a KV cache; returns ``(B, T0 + n)``.

        ``temperature=0`` is greedy decoding; otherwise sample from ``softmax(logits / temperature)`` restricted to
        the ``top_k`` most likely tokens. For encoder-decoder models pass ``src`` (the prompt then starts the target,
        e.g. a BOS token). Stops early when every sequence has produced ``eos_id``.
        """
        if self.cfg.kind == "encoder":
            raise ValueError("generate() needs a decoder; this model is a bidirectional encoder.")
        check_int(max_new_tokens, "max_new_tokens", minimum=0)
        check_number(temperature, "temperature", minimum=0, hint="0 is greedy decoding.")
        if top_k is not None:
            check_int(top_k, "top_k", minimum=1, hint="None means no restriction.")
        if eos_id is not None:  # True would stop at token 1, 1.5 or "x" never, 10**20 overflow mid-decoding
            check_int(eos_id, "eos_id", minimum=0, maximum=self.cfg.vocab_size - 1,
                      hint="It is a token id of the vocabulary; None never stops early.")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}. Hint: "
                            f"torch.Generator().manual_seed(0).")
        if self.cfg.kind == "decoder" and (src is not None or src_padding_mask is not None):
            raise ValueError("src and src_padding_mask are for encoder_decoder models; this decoder reads only the "
                             "prompt (put the context in the prompt).")
        if not isinstance(prompt, Tensor) or prompt.dtype == torch.bool or prompt.dtype.is_floating_point or \
                prompt.dtype.is_complex:
            got = f"a {prompt.dtype} tensor" if isinstance(prompt, Tensor) else type(prompt).__name__
            raise TypeError(f"prompt must be an integer tensor of token ids (B, T0); got {got}.")
        if prompt.dim() != 2:
            raise ValueError(f"prompt must have shape (B, T0); got shape {tuple(prompt.shape)}. "
                             f"Hint: prompt[None] for a single sequence.")
        if prompt.shape[1] == 0:
            raise ValueError(f"prompt must hold at least one token per sequence; got shape {tuple(prompt.shape)}. "
                             f"Start from a BOS token, e.g. torch.zeros(B, 1, dtype=torch.long).")
        if prompt.shape[0] == 0:  # an empty batch: nothing to decode
            return prompt.new_zeros((0, prompt.shape[1] + max_new_tokens))
        # The tokens fed to the decoder sit at positions 0 .. T0 + n - 2 (the last new token is never fed back):
        # refuse now, not midway, when an encoding is not defined that far.
        last = prompt.shape[1] - 1 + max(0, max_new_tokens - 1)
        for pe in self.decoder.encodings():
            if not pe.extrapolates and last >= pe.max_seq_len:
                raise ValueError(f"generate: the {pe.name} encoding is defined for positions < max_seq_len="
                                 f"{pe.max_seq_len}, but a prompt of {prompt.shape[1]} tokens and max_new_tokens="
                                 f"{max_new_tokens} reach position {last}. Use max_new_tokens <= "
                                 f"{pe.max_seq_len - prompt.shape[1] + 1}, a shorter prompt, or an encoding that "
                                 f"extrapolates.")
        was_training = self.training
        self.eval()
        try:
            memory = None
            cache = KVCache()
            if self.cfg.kind == "encoder_decoder":
                if src is None:
                    raise ValueError("generate() on an encoder_decoder model needs src=.")
                memory = self.encode(src, padding_mask=src_padding_mask)
            out = prompt
            logits = self.logits(self.decode(prompt, memory, memory_padding_mask=src_padding_mask, cache=cache))
            done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
            for _ in range(max_new_tokens):
                next_logits = logits[:, -1, :].float()  # (B, vocab)
                if temperature == 0:
                    nxt = next_logits.argmax(dim=-1, keepdim=True)
                else:
                    next_logits = next_logits / temperature
                    if top_k is not None:
                        kth = torch.topk(next_logits, min(top_k, next_logits.shape[-1])).values[:, -1:]
                        next_logits = next_logits.masked_fill(next_logits < kth, float("-inf"))
                    nxt = torch.multinomial(next_logits.softmax(-1), 1, generator=generator)  # (B, 1)
                out = torch.cat((out, nxt), dim=1)
                if eos_id is not None:
                    done |= nxt[:, 0] == eos_id
                    if bool(done.all()):
                        break
                if out.shape[1] == prompt.shape[1] + max_new_tokens:
                    break  # the last token's logits would go unused
                logits = self.logits(self.decode(nxt, memory, memory_padding_mask=src_padding_mask, cache=cache))
            return out
        finally:
            self.train(was_training)

    # -- persistence --------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write config and weights to ``path`` atomically (temp file + fsync + rename); load with :meth:`load`.

        The file carries the sha256 of its payload, which :meth:`load` checks: a corrupted file is an error, never
        a model with wrong weights.
        """
        payload = {"format": "posenc.Transformer/1", "config": dataclasses.asdict(self.cfg),
                   "state_dict": self.state_dict()}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(Path(path), checked_bytes(buffer.getvalue()))

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> "Transformer":
        """Rebuild a model saved with :meth:`save` (``torch.load(weights_only=True)``: no code is executed).

        Raises ``ValueError`` (:class:`posenc._io.DamagedFileError`) naming the file for an empty, truncated,
        corrupted (sha256 mismatch) or foreign file; ``FileNotFoundError`` if there is none.
        """
        hint = "save the model again with Transformer.save (or restore the file from a copy)."
        data = read_checked(path, "posenc Transformer checkpoint", hint)
        try:
            payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, AttributeError) as exc:
            raise DamagedFileError(f"{path} is not a readable posenc Transformer checkpoint ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else 'empty'}); {hint}") from exc
        if not isinstance(payload, dict) or payload.get("format") != "posenc.Transformer/1" or \
                not isinstance(payload.get("config"), dict) or not isinstance(payload.get("state_dict"), dict):
            raise DamagedFileError(f"{path} is not a posenc Transformer checkpoint (written by Transformer.save); "
                                   f"{hint}")
        try:
            model = cls(TransformerConfig(**payload["config"]))
            model.load_state_dict(payload["state_dict"])
        except (TypeError, ValueError, KeyError, RuntimeError) as exc:
            raise DamagedFileError(f"{path} holds a configuration or weights this posenc cannot build "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0]}); {hint}") from exc
        return model

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def convert_rope_layout(model: Transformer, layout: str) -> Transformer:
    """Switch every rotary encoding in ``model`` to ``layout``, permuting q/k projections so outputs are unchanged.

    Works in place and returns ``model``; use it to load a checkpoint trained in one layout (e.g. Meta's interleaved
    llama weights) into code that uses the other (Hugging Face's ``rotate_half``).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"convert_rope_layout: layout must be one of {LAYOUTS}; got {layout!r}.")
    stacks = [s for s in (model.encoder, model.decoder) if s is not None]
    if not any(isinstance(s.pe, RoPE) for s in stacks):
        raise ValueError(f"convert_rope_layout: the model's encoding {model.cfg.encoding!r} is not rotary.")
    with torch.no_grad():
        for stack in stacks:
            pe = stack.pe
            if not isinstance(pe, RoPE) or pe.layout == layout:
                continue
            for block in stack.blocks:
                att = block.attn
                for proj, heads in ((att.q_proj, att.n_heads), (att.k_proj, att.n_kv_heads)):
                    proj.weight.copy_(permute_projection(proj.weight, n_heads=heads, head_dim=att.head_dim,
                                                         rotary_dim=pe.rotary_dim, src=pe.layout, dst=layout))
            pe.layout = layout
    model.cfg.encoding_options = {**model.cfg.encoding_options, "layout": layout}
    return model
