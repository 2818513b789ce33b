"""The `PositionalEncoding` interface and the registry every encoding joins.

An encoding touches a Transformer at up to four places, one hook each. Every hook defaults to doing nothing, so
an encoding overrides only what it changes:

==============  ===========================================  ==========================================
hook            what it does                                  used by
==============  ===========================================  ==========================================
``embed``       adds to / mixes into token embeddings         sinusoidal, learned, scaled_sinusoidal
``rotate``      rotates (or scales) queries and keys          rope, xpos
``bias``        an additive ``(H, Tq, Tk)`` attention bias    ALiBi, T5, KERPLE, FIRE, ...
``score_mod``   the same bias as a FlexAttention callable     (fused attention without a T x T tensor)
``features``    per-token tensors from the layer's input,     FoX, PaTH, Inkling (encodings that read
                cached by the model beside k and v            the hidden state)
``terms``       logit / value terms and the normaliser the    Shaw, Transformer-XL, CoPE, TUPE, DAPE,
                backends compute per block of query rows      Self-Extend, DCA, FoX, stick-breaking
                (:mod:`posenc.terms`)
``commit``      what the layer's KV cache keeps after a call  PaTH (rewrites the cached keys)
==============  ===========================================  ==========================================

An encoding class may declare ``per_layer = True``: a model then builds one instance per attention layer (its own
weights, e.g. FoX's forget gate) instead of one shared by the stack.

Positions are always explicit integer tensors (int64, or int32) of shape ``(T,)`` (shared by the batch) or
``(B, T)`` (per sequence), so KV-cache decoding, packed sequences and randomized training positions work for every
encoding.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from posenc._checks import check_bool, check_int, reads_values
from posenc.positions import Positions
from posenc.registry import Registry
from posenc.terms import AttentionCall, AttentionTerms, LayerView

__all__ = [
    "POSITION_DTYPES",
    "EncodingInfo",
    "PositionalEncoding",
    "check_integer_tensor",
    "check_positions",
    "check_positions_layout",
    "default_positions",
    "encoding_class",
    "get_encoding",
    "list_encodings",
    "register",
    "registered_names",
]

FAMILIES = ("none", "absolute", "rotary", "relative", "contextual", "multiscale", "2d", "graph", "adaptive", "wrapper")


# Integer dtypes positions may have: differences of positions must not wrap (uint8 7 - 9 is 254), so only these.
POSITION_DTYPES = (torch.int64, torch.int32)


def default_positions(length: int, *, offset: int | Tensor = 0,
                      device: torch.device | str | None = None) -> Tensor:
    """``offset, offset + 1, ..., offset + length - 1`` as int64.

    ``offset`` is an int (shape ``(length,)``), a 0-d tensor (``(length,)``) or a ``(B,)`` tensor of where each
    sequence starts (``(B, length)``), as a KV cache continues each row where its positions stopped.
    """
    if isinstance(offset, Tensor):
        offset = offset.to(device=offset.device if device is None else device, dtype=torch.long)
        steps = torch.arange(length, dtype=torch.long, device=offset.device)
        return offset[..., None] + steps if offset.dim() else offset + steps
    # dtype=torch.long is not observable (int bounds give int64 anyway): it states the contract
    return torch.arange(offset, offset + length, dtype=torch.long, device=device)  # pragma: no mutate


def check_positions(pos: Tensor | None, length: int, *, name: str = "pos", batch: int | None = None,
                    device: torch.device | None = None) -> Tensor | None:
    """Validate a positions tensor: integer dtype, shape ``(T,)`` or ``(B, T)``, on ``device``, non-negative.

    Returns ``pos`` unchanged (``None`` stays ``None``). Raises ``TypeError``/``ValueError`` naming the argument.
    """
    if pos is None:
        return None
    check_positions_layout(pos, length, name=name, batch=batch, device=device)
    if pos.numel() and reads_values(pos) and pos.min() < 0:
        raise ValueError(f"{name} must be non-negative; got a minimum of {int(pos.min())}.")
    return pos


def check_integer_tensor(value, *, name: str, shape: str, what: str = "positions", type_hint: str = "",
                         dtype_hint: str = "") -> None:
    """Raise ``TypeError`` unless ``value`` is an int64 or int32 tensor (metadata only: no value is read).

    The one check of every integer tensor that positions-like arguments go through (positions, segment ids,
    coordinates, hierarchy levels). Other integer dtypes are refused: differences of positions in ``uint8`` or
    ``int8``/``int16`` wrap around silently (a T5 bucket of ``7 - 9`` would be 254), and bool is a mask, not a
    position. ``shape`` is the expected shape in words, ``what`` what the integers are; the hints end each message.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be an int64 tensor of shape {shape}; got {type(value).__name__}.{type_hint}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer {what} (int64); got dtype {value.dtype}.{dtype_hint}")
    if value.dtype not in POSITION_DTYPES:
        raise TypeError(f"{name} must hold integer {what} as int64 (or int32); got dtype {value.dtype}, whose "
                        f"differences wrap around. Hint: {name}.long().")


def check_positions_layout(pos: Tensor, length: int, *, name: str = "pos", batch: int | None = None,
                           device: torch.device | None = None) -> None:
    """The checks of :func:`check_positions` that read no values: type, dtype, shape, batch, device.

    Reads only metadata (no kernel, no device sync), so a hook may repeat it freely for positions whose values
    were already checked (e.g. the same positions tensor at every layer of one forward).
    """
    check_integer_tensor(pos, name=name, shape="(T,) or (B, T)",
                         type_hint=" Hint: torch.arange(T) gives the default positions.",
                         dtype_hint=" Fractional positions are not supported here: to stretch a RoPE model, use a "
                                    "scaling instead. Hint: pos.long().")
    if pos.dim() not in (1, 2):
        raise ValueError(f"{name} must have shape (T,) or (B, T); got shape {tuple(pos.shape)}.")
    if pos.shape[-1] != length:
        raise ValueError(f"{name} has {pos.shape[-1]} positions on its last axis but the sequence has {length} tokens; "
                         f"they must match.")
    if batch is not None and pos.dim() == 2 and pos.shape[0] not in (1, batch):
        raise ValueError(f"{name} has batch size {pos.shape[0]} but the input has batch size {batch}; "
                         f"pass (T,) to share positions across the batch, or (B, T).")
    if device is not None and pos.device != device:
        raise ValueError(f"{name} is on {pos.device} but the input is on {device}; move it with {name}.to(x.device).")


class PositionalEncoding(nn.Module):
    """Base class for every positional encoding: hooks that default to doing nothing.

    Subclasses override the hooks they need and are registered with ``@register("name")``. The constructor of every
    encoding takes the keyword-only arguments below plus its own options.

    Args:
        dim: model width (the size of token embeddings).
        n_heads: number of attention (query) heads; ``head_dim = dim // n_heads``.
        max_seq_len: the longest sequence the encoding is built or trained for. Encodings with
            ``extrapolates = True`` accept positions beyond it; the others raise a clear error.
        causal: whether the attention it is used in is causal (decoder) or bidirectional (encoder). Only
            direction-aware encodings (e.g. bucketed relative biases) use it.
    """

    # Filled in by @register and by each subclass.
    name: ClassVar[str] = ""
    family: ClassVar[str] = "none"
    paper: ClassVar[str | None] = None  # arXiv id of the paper that introduced it
    extrapolates: ClassVar[bool] = True  # defined for positions >= max_seq_len
    # False when the score_mod cannot be differentiated by FlexAttention (it indexes one trainable tensor more than
    # once, which torch's flex backward rejects); training then uses the chunked/dense backends instead.
    flex_backward: ClassVar[bool] = True
    # The structure fields of posenc.Positions the encoding reads beyond plain positions ("coordinates",
    # "adjacency", "token_ids"); :meth:`bind` hands them over. Empty: it sees plain positions only.
    reads: ClassVar[tuple[str, ...]] = ()
    # True when each attention layer needs its own instance (its own weights, e.g. FoX's forget gate): a model then
    # builds one per layer instead of one for the stack. Such an encoding may not use ``embed`` (the stack embeds once).
    per_layer: ClassVar[bool] = False
    # True when terms(call) reads the layer it serves (call.layer: its own q/k projections, as DeBERTa projects its
    # relative table with them); a bare posenc.attention call must then pass layer=.
    reads_layer: ClassVar[bool] = False

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False) -> None:
        super().__init__()
        for arg, value in (("dim", dim), ("n_heads", n_heads), ("max_seq_len", max_seq_len)):
            check_int(value, f"{type(self).__name__}: {arg}", minimum=1)
        # bool("False") is True: a direction-aware encoding (T5's buckets, FoX's and data-dependent ALiBi's reversed
        # gates) would silently be built for the other direction
        check_bool(causal, f"{type(self).__name__}: causal", hint="True for a decoder, False for an encoder.")
        if dim % n_heads:
            raise ValueError(f"{type(self).__name__}: dim={dim} is not divisible by n_heads={n_heads}; "
                             f"head_dim = dim // n_heads must be an integer.")
        self.dim = dim
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.max_seq_len = max_seq_len
        self.causal = causal

    # -- positions --------------------------------------------------------------------------------------------------
    def make_positions(self, batch: int, length: int, *, offset: int | Tensor = 0,
                       device: torch.device | str | None = None) -> Tensor:
        """Positions for a batch when the caller gives none: ``offset + arange(length)``.

        ``offset`` is an int or a 0-d tensor (shape ``(T,)``), or a ``(B,)`` tensor of where each sequence starts
        (shape ``(B, T)``: a KV cache continues each row where its positions stopped).

        Overridden by encodings that choose positions themselves (``randomized`` samples them while training).
        """
        return default_positions(length, offset=offset, device=device)

    # -- one forward's positions --------------------------------------------------------------------------------------
    def bind(self, positions: Positions) -> PositionalEncoding:
        """This encoding for one forward pass at ``positions``: ``self``, or a view of it bound to them.

        A model calls it once per forward with its validated :class:`~posenc.Positions` and uses the result at every
        layer. An encoding that reads structure (``reads``) returns a view holding this forward's (validated)
        coordinates or graph; one that prepares per-forward tables (RoPE's cos/sin, a bias) returns a view that
        computes them once and trusts the bound positions without checking them again. A view shares the
        encoding's parameters, buffers and submodules, and is meant for that one forward. The default: ``self``.
        """
        return self

    def bound_view(self, positions: Positions, **state) -> PositionalEncoding:
        """A shallow view of this module for one forward: same parameters, buffers and submodules, plus ``state``.

        ``positions`` (validated) is what :meth:`trusts` answers for; ``state`` are attributes of the view only
        (e.g. a coordinate table), so the encoding itself is never changed.
        """
        view = copy.copy(self)  # a new __dict__ sharing _parameters, _buffers and _modules
        versions = {name: _version(t) for name in ("pos", "key_pos") if (t := getattr(positions, name)) is not None}
        view.__dict__.update(state, _bound_positions=positions, _bound_versions=versions, _bound_tables={})
        return view

    def trusts(self, pos: Tensor) -> bool:
        """Whether ``pos`` reads only values of the validated positions this view was bound to: checks may be skipped.

        True for those tensors themselves and for views reading nothing but their elements (the slices ``chunked``
        takes per block), as long as neither was modified in place since; never for another part of the same
        storage (``big[1:]`` validated does not vouch for ``big[:3]``).
        """
        return self._bound_source(pos) is not None

    def trusted_max(self, pos: Tensor) -> int | None:
        """An upper bound of ``pos``, known without a device sync, when :meth:`trusts` it; else ``None``."""
        source = self._bound_source(pos)
        if source is None:
            return None
        bound = self.__dict__["_bound_positions"]
        return bound.max_pos if source == "pos" else bound.max_key_pos

    def _bound_source(self, pos: Tensor) -> str | None:
        bound = self.__dict__.get("_bound_positions")
        if bound is None or not bound.validated or not isinstance(pos, Tensor):
            return None
        versions = self.__dict__.get("_bound_versions", {})
        for name in ("pos", "key_pos"):
            t = getattr(bound, name)
            if t is None or _version(t) != versions.get(name):  # changed in place since it was validated
                continue
            if t is pos or _reads_within(pos, t):
                return name
        return None

    # -- hooks ------------------------------------------------------------------------------------------------------
    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        """Add position information to token embeddings ``x`` ``(B, T, dim)`` at ``pos`` ``(T,)`` or ``(B, T)``."""
        return x

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate queries ``(B, H, Tq, D)`` and keys ``(B, Hkv, Tk, D)`` by their positions.

        Returns q and k of width :meth:`rotated_width` ``(D)`` (``D`` itself, unless the encoding declares otherwise).
        """
        return q, k

    def rotated_width(self, head_dim: int) -> int:
        """The width of q and k after :meth:`rotate` for heads of ``head_dim`` channels: ``head_dim`` (the default).

        An encoding whose rotation changes the width declares it here (PoPE: ``2 * head_dim``); values keep
        ``head_dim``, and :func:`posenc.attention` then keeps the softmax scale of the original heads,
        ``1 / sqrt(head_dim)``, as the paper's score does.
        """
        return head_dim

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Additive attention bias, ``(H, Tq, Tk)`` or ``(B, H, Tq, Tk)`` in float32, or ``None`` for no bias."""
        return None

    def score_mod(self, q_pos: Tensor, k_pos: Tensor) -> Callable | None:
        """A FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)`` computing the same numbers as ``bias``."""
        return None

    def features(self, x: Tensor, pos: Tensor, *, layer: LayerView) -> dict[str, Tensor]:
        """Per-token tensors computed from the layer's (normed) input ``x`` ``(B, T, dim)`` at ``pos``.

        Each value is ``(B, Hkv|H|1, T, X)``. A model caches them beside the layer's k and v (concatenated on the
        time axis, like keys) and hands every key's entries -- the cached ones first -- to :meth:`terms` as
        ``call.features``. Pure: no state. The default: none (``{}``).
        """
        return {}

    def terms(self, call: AttentionCall) -> AttentionTerms | None:
        """What the encoding adds inside attention beyond a bias, for one call, or ``None`` (the default).

        Called once per :func:`posenc.attention` call with the validated :class:`~posenc.terms.AttentionCall`: ``q``
        ``(B, H, Tq, D)``, ``k`` ``(B, Hkv, Tk, D)``, ``v`` ``(B, Hkv, Tk, Dv)``, positions ``(T,)`` or ``(B, T)``,
        ``scale``, ``causal``, ``attn_mask``, every key's ``features`` and the ``layer`` served. Validate here and
        prepare what every block shares; the returned :class:`~posenc.terms.AttentionTerms` is then evaluated by the
        backends per block of query rows, with their one mask, normaliser and grouped-query expansion.

        Must be pure (no state changes): :func:`posenc.explain` calls it too.
        """
        return None

    def commit(self, k: Tensor, v: Tensor, features: Mapping[str, Tensor], *, new: int,
               attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """What the layer's KV cache keeps after a call that added ``new`` tokens (default: everything, unchanged).

        ``k`` ``(B, Hkv, Tk, D)``, ``v`` ``(B, Hkv, Tk, Dv)`` and ``features`` are every key's (the cached ones
        first, the call's ``new`` last), as the call attended to them; ``attn_mask`` is the call's mask (bool, True =
        attend, ``(B|1, 1, new|1, Tk)``: packed documents and padding; ``None`` when nothing is masked), so a commit
        can repeat what ``terms(call)`` computed from ``call.attn_mask`` (PaTH's short convolution stops where a
        token may not attend). PaTH returns the cached keys transformed by the call's Householder product. Runs only
        when a model updates a cache (never in :func:`posenc.explain`).
        """
        return k, v, dict(features)

    # -- what the dispatcher and the model ask ------------------------------------------------------------------------
    @property
    def uses_embed(self) -> bool:
        return _overrides(self, "embed")

    @property
    def uses_rotate(self) -> bool:
        return _overrides(self, "rotate")

    @property
    def uses_bias(self) -> bool:
        return _overrides(self, "bias")

    @property
    def uses_terms(self) -> bool:
        """Whether :meth:`terms` may return attention terms (wrappers and optional terms override this)."""
        return _overrides(self, "terms")

    @property
    def uses_features(self) -> bool:
        """Whether :meth:`features` computes anything (a model then caches it beside k and v)."""
        return _overrides(self, "features")

    @property
    def uses_commit(self) -> bool:
        """Whether :meth:`commit` changes what a KV cache keeps."""
        return _overrides(self, "commit")

    def check_length(self, pos: Tensor) -> None:
        """Raise if ``pos`` reaches past ``max_seq_len`` and the encoding is not defined there."""
        if self.extrapolates or pos.numel() == 0 or not reads_values(pos):
            return
        top = self.trusted_max(pos)
        top = int(pos.max()) if top is None else top
        if top >= self.max_seq_len:
            raise ValueError(f"{self.name or type(self).__name__}: position {top} is past max_seq_len="
                             f"{self.max_seq_len}, and this encoding is not defined beyond it. Build it with a larger "
                             f"max_seq_len{self._extend_hint()}.")

    def _extend_hint(self) -> str:
        return ""

    def rebuild_caches(self) -> None:
        """Recompute cached tables (cos/sin, sinusoid tables) in float32 on the current device.

        Called after every ``.to()``/``.cuda()``/``.half()``: caches follow the module's device but never its dtype,
        so ``model.to(torch.bfloat16)`` does not round a RoPE table that later runs at float32 again.
        """

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.rebuild_caches()
        return self

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_heads={self.n_heads}, max_seq_len={self.max_seq_len}"


def _version(t: Tensor) -> int | None:
    """``t``'s in-place version counter (``None`` for inference tensors, which keep none)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _reads_within(x: Tensor, whole: Tensor) -> bool:
    """Whether every element ``x`` reads is an element of ``whole`` (same storage and dtype; metadata only).

    ``whole`` must cover a gap-free stretch of its storage (contiguous once broadcast dims are dropped, as validated
    positions ``(T,)``, ``(B, T)`` or an expanded ``(1, T)`` are); ``x`` must then lie inside that stretch.
    """
    if x.dtype != whole.dtype or x.device != whole.device or x.numel() == 0 or whole.numel() == 0:
        return x.numel() == 0 and x.dtype == whole.dtype
    if x.untyped_storage().data_ptr() != whole.untyped_storage().data_ptr():
        return False
    dims = [(size, stride) for size, stride in zip(whole.shape, whole.stride()) if size > 1 and stride != 0]
    expected = 1
    for size, stride in reversed(dims):
        if stride != expected:
            return False  # a strided stretch has gaps whose values were never validated
        expected *= size
    lo, hi = whole.storage_offset(), whole.storage_offset() + expected - 1
    x_lo = x.storage_offset()
    x_hi = x_lo + sum((size - 1) * stride for size, stride in zip(x.shape, x.stride()))
    return lo <= x_lo and x_hi <= hi and all(stride >= 0 for stride in x.stride())


def _overrides(obj: object, method: str) -> bool:
    return getattr(type(obj), method) is not getattr(PositionalEncoding, method)


# -- registry ----------------------------------------------------------------------------------------------------------
_REGISTRY: Registry[type[PositionalEncoding]] = Registry("encoding", PositionalEncoding, example="rope",
                                                        decorator="register", attribute="family", allowed=FAMILIES)


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make an encoding available as ``get_encoding(name, ...)``."""
    return _REGISTRY.register(name)


def encoding_class(name: str) -> type[PositionalEncoding]:
    """The class registered as ``name`` (case-insensitive), without building it."""
    return _lookup(name)


def registered_names() -> list[str]:
    """Names of every registered encoding, sorted."""
    _load_builtin_encodings()
    return _REGISTRY.names()


def _lookup(name: str) -> type[PositionalEncoding]:
    _load_builtin_encodings()
    return _REGISTRY.lookup(name.lower() if isinstance(name, str) else name)


def get_encoding(name: str, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 **options) -> PositionalEncoding:
    """Build the encoding registered as ``name``.

    Args:
        name: registry key, e.g. ``"rope"``; ``list_encodings()`` shows them all.
        dim: model width; see :class:`PositionalEncoding`.
        n_heads: number of query heads (``head_dim = dim // n_heads``).
        max_seq_len: the longest sequence the encoding is built or trained for.
        causal: whether the attention it serves is causal (decoder) or bidirectional (encoder).
        **options: the encoding's own keyword arguments (e.g. ``base=10000.0`` for ``rope``). Unknown options raise
            ``TypeError`` naming the accepted ones; each encoding's page of the documentation lists them.

    Returns:
        The encoding, a :class:`PositionalEncoding` (an ``nn.Module``).

    Example:
        >>> pe = get_encoding("rope", dim=512, n_heads=8, layout="half")
    """
    cls = _lookup(name)
    accepted = _accepted_options(cls)
    if accepted is not None:  # None: the constructor takes **kwargs and checks its options itself
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise TypeError(f"{name}: unknown option(s) {unknown}; it accepts {sorted(accepted) or 'none'}.")
    return cls(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, **options)


def _accepted_options(cls: type) -> set[str] | None:
    """Keyword options a class's constructor accepts beyond the common four (None when it takes **kwargs)."""
    params = inspect.signature(cls).parameters  # the constructor's, without self
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {p for p in params if p not in ("self", "dim", "n_heads", "max_seq_len", "causal")}


@dataclasses.dataclass(frozen=True)
class EncodingInfo:
    """One row of :func:`list_encodings`."""

    name: str
    family: str
    parameters: int  # trainable parameters at the probe size (dim=512, n_heads=8, max_seq_len=2048)
    paper: str | None  # arXiv id
    extrapolates: bool  # defined for positions past max_seq_len
    summary: str  # first line of the docstring


def list_encodings(*, dim: int = 512, n_heads: int = 8, max_seq_len: int = 2048) -> list[EncodingInfo]:
    """Describe every registered encoding; parameter counts are for an instance of the given size."""
    rows = []
    for name in registered_names():
        cls = _REGISTRY[name]
        pe = cls(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len)
        n_params = sum(p.numel() for p in pe.parameters() if p.requires_grad)
        summary = (inspect.getdoc(cls) or "").strip().splitlines()[0] if cls.__doc__ else ""
        rows.append(EncodingInfo(name, cls.family, n_params, cls.paper, pe.extrapolates, summary))
    return rows


_LOADED = False


def _load_builtin_encodings() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from posenc import encodings  # noqa: F401  (registers the built-in encodings)
