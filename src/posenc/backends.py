"""The attention core: :func:`attention` validates a call once and picks a backend, never an encoding's name.

Shapes: ``q`` is ``(B, H, Tq, D)``, ``k`` is ``(B, Hkv, Tk, D)`` and ``v`` is ``(B, Hkv, Tk, Dv)`` with ``H`` a
multiple of ``Hkv`` (grouped-query attention). Positions are int64 ``(T,)`` or ``(B, T)``. The public entry points
are ``posenc.attention`` and ``posenc.explain`` (this module's :func:`attention` and :func:`explain`); the tunables of
the backend choice live in :mod:`posenc.attention_settings`.

An encoding acts inside attention through a position-only ``bias`` (with its FlexAttention ``score_mod``), or
through attention *terms* (:mod:`posenc.terms`: logit terms, a value term, another normaliser) when it needs the
queries, keys, scores or the layer's features. Either way the core owns the mask, the normaliser and the
grouped-query expansion (:mod:`posenc.blocks`); with terms, ``reference``, ``dense`` and ``chunked`` evaluate them
per block of query rows (:func:`posenc.blocks.attend_explicit`); ``sdpa``'s fused kernels and ``flex`` cannot.

Backends (``backend=``), all computing the same numbers:

- ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient / math kernels),
  given the bias, causal mask and ``attn_mask`` as one mask. It refuses calls with attention terms (SDPA cannot
  compute them).
- ``"dense"``: the encoding's ``bias``, the causal mask and ``attn_mask`` materialized as one ``(B|1, H, Tq, Tk)``
  float mask, then SDPA; with terms, the explicit computation of all rows in one block. Fastest for short
  sequences; ``O(H * Tq * Tk)`` extra memory.
- ``"chunked"`` (:mod:`posenc.chunked`): queries in blocks; each block builds only its own mask or scores, and under
  autograd each block is recomputed in the backward pass, so extra memory is ``O(rows * Tk)`` in the forward *and*
  the backward pass. Causal blocks skip the keys no query of the block may see. The CPU training path for long
  sequences.
- ``"flex"``: :func:`torch.nn.attention.flex_attention` with the encoding's ``score_mod`` and a block mask for
  causal / boolean ``attn_mask``, compiled once per process (``O(T)`` extra memory; :mod:`posenc.flex`). On CPU Flex
  runs only compiled and forward-only, so it refuses calls that need gradients there.
- ``"reference"``: explicit attention in float32 (float64 for float64 input) over all rows at once, for every
  encoding: the oracle for tests.
- ``"auto"``: the highest-priority backend that both *supports* the call (can compute it exactly) and *suits* it
  (is the cheap choice for its device, size and gradient needs): ``flex`` > ``chunked`` > ``dense`` > ``sdpa``.
  :func:`explain` says which and why, and every ``auto`` choice is logged at DEBUG level on the
  ``"posenc.attention"`` logger.

More backends register themselves with :func:`register_backend`.

Causal masking is by *index*, aligned bottom-right: query ``i`` of ``Tq`` sits at key index ``Tk - Tq + i``, which
is right for KV-cache decoding (the new queries are the last tokens) and independent of position values (which may
be randomized or restart per packed document; mask documents with ``attn_mask``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from posenc import attention_settings as settings
from posenc._checks import check_bool, check_number
from posenc.base import PositionalEncoding, check_positions, check_positions_layout, default_positions
from posenc.blocks import attend_explicit, sdpa_mask
from posenc.chunked import chunk_rows, chunked_attention, dense_mask_shape
from posenc.flex import HAVE_CXX, flex_block_mask, flex_forward, flex_module
from posenc.positions import Positions
from posenc.terms import AttentionCall, LayerView

__all__ = ["BACKENDS", "Backend", "attention", "chunk_rows", "explain", "prepare_call", "register_backend"]

logger = logging.getLogger("posenc.attention")


def describe(call: AttentionCall) -> str:
    """One line of the facts ``auto`` decides on (for :func:`explain` and the debug log)."""
    facts = (f"device={call.q.device.type}, dtype={str(call.q.dtype).removeprefix('torch.')}, "
             f"grad={call.needs_grad}, causal={call.causal}, q {tuple(call.q.shape)}, k {tuple(call.k.shape)}")
    shape = dense_mask_shape(call)
    size = _human_bytes(math.prod(shape) * 4)
    if call.uses_terms:
        return f"{facts}, terms={call.pe.name}: dense scores {shape} = {size} in float32"
    if not call.uses_bias:
        return f"{facts}, no bias"
    return f"{facts}, bias={call.pe.name}: dense mask {shape} = {size} in float32"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable[[AttentionCall], Tensor]
    supports: Callable[[AttentionCall], str | None]  # None if it can run this call exactly, else why not
    priority: int  # auto tries higher first
    suits: Callable[[AttentionCall], str | None]  # None if auto should pick it for this call (cost), else why not


BACKENDS: dict[str, Backend] = {}


def _always(call: AttentionCall) -> str | None:
    return None


def register_backend(name: str, *, priority: int = 0, supports: Callable[[AttentionCall], str | None] = _always,
                     suits: Callable[[AttentionCall], str | None] = _always):
    """Decorator: add ``fn(call: AttentionCall) -> (B, H, Tq, Dv)`` as ``backend=name``.

    Args:
        name: the ``backend=`` name.
        priority: ``auto`` tries higher priorities first.
        supports: ``supports(call)`` returns ``None`` when the backend can compute this call exactly, or a reason
            why not (then neither ``auto`` nor an explicit ``backend=name`` runs it).
        suits: ``suits(call)`` returns ``None`` when ``auto`` should pick this backend for the call (it is the cheap
            choice for this device, size and gradient need), or a reason why not; an explicit ``backend=name``
            ignores it.
    """

    def decorator(fn: Callable[[AttentionCall], Tensor]) -> Callable[[AttentionCall], Tensor]:
        BACKENDS[name] = Backend(name, fn, supports, priority, suits)
        return fn

    return decorator


# -- backends ----------------------------------------------------------------------------------------------------------
def _no_bias_reason(call: AttentionCall) -> str | None:
    if call.uses_bias or call.uses_terms:
        return None
    return "no bias to apply: sdpa's fused kernels need nothing materialized"


def _sdpa_supports(call: AttentionCall) -> str | None:
    if call.uses_terms:
        return (f"{call.pe.name}'s attention terms read the queries, keys or scores, which SDPA's kernels cannot "
                f"compute; use 'dense' (the explicit computation) or 'chunked'")
    return None


def _dense_suits(call: AttentionCall) -> str | None:
    return _no_bias_reason(call)


@register_backend("sdpa", priority=10, supports=_sdpa_supports)
def _sdpa(call: AttentionCall) -> Tensor:
    """SDPA with bias, causal mask and ``attn_mask`` as one mask (the fused causal kernel when that is all)."""
    q, k, v = call.q, call.k, call.v
    if call.causal and call.attn_mask is None and not call.uses_bias and q.shape[-2] == k.shape[-2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=call.scale, enable_gqa=call.n_rep > 1)
    mask = sdpa_mask(call, q.dtype)  # (B|1, H|1, Tq, Tk) or None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=call.scale, enable_gqa=call.n_rep > 1)


@register_backend("dense", priority=20, suits=_dense_suits)
def _dense(call: AttentionCall) -> Tensor:
    """One block of every query row: SDPA with the dense mask, or with attention terms the explicit computation."""
    if call.uses_terms:
        return attend_explicit(call, 0, call.q.shape[-2], call.q, call.k, call.v)  # (B, H, Tq, Dv)
    return _sdpa(call)


def _chunked_suits(call: AttentionCall) -> str | None:
    if not (call.uses_bias or call.uses_terms):
        return _no_bias_reason(call)
    n, most = math.prod(dense_mask_shape(call)), settings.get("DENSE_MAX_ELEMENTS")
    if n <= most:
        what = "scores" if call.uses_terms else "mask"
        return (f"the dense {what} is small ({n} <= attention_settings.DENSE_MAX_ELEMENTS = {most} elements): "
                f"dense is faster")
    return None


register_backend("chunked", priority=30, suits=_chunked_suits)(chunked_attention)


def _flex_supports(call: AttentionCall) -> str | None:
    if call.uses_terms:
        return (f"{call.pe.name}'s attention terms read the queries, keys or scores, which a FlexAttention "
                f"score_mod cannot; use 'chunked' (O(rows * Tk) memory) or 'dense'")
    if flex_module() is None:
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention (it needs torch >= 2.5)"
    device = call.q.device.type
    if device == "cpu" and call.needs_grad:
        return (f"FlexAttention on CPU is forward-only in torch {torch.__version__.split('+')[0]} and these inputs "
                f"need gradients; use 'chunked' for training (or run under torch.no_grad())")
    if device == "cpu" and not HAVE_CXX:
        return "FlexAttention on CPU runs only under torch.compile, which needs a C++ compiler (g++ or clang++)"
    if call.q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"FlexAttention computes in float32/bfloat16/float16, not {call.q.dtype}"
    if call.attn_mask is not None and call.attn_mask.dtype != torch.bool:
        return "a float attn_mask cannot become a block_mask; pass a bool mask (True = attend) or use 'chunked'"
    if device == "cpu" and call.uses_bias and (call.q_pos.dim() == 2 or call.k_pos.dim() == 2):
        # torch 2.13's CPU flex template fails to compile (C++ error 'cur_qSplitSize4' not declared) when a score_mod
        # reads per-sequence positions with Tq != Tk; refuse (B, T) positions on CPU rather than crash mid-call.
        return ("FlexAttention on CPU cannot compile a score_mod over per-sequence (B, T) positions in torch "
                f"{torch.__version__.split('+')[0]} (inductor codegen error); use 'chunked' or 'dense'")
    if call.uses_bias and type(call.pe).score_mod is PositionalEncoding.score_mod:
        return f"{call.pe.name} defines bias() but no score_mod()"
    if call.uses_bias and call.needs_grad and not call.pe.flex_backward:  # a class attribute of every encoding
        return (f"{call.pe.name}'s score_mod indexes a trainable tensor more than once, which FlexAttention's "
                f"backward does not support (torch {torch.__version__.split('+')[0]}); use 'chunked' or 'dense'")
    return None


def _flex_suits(call: AttentionCall) -> str | None:
    if not call.uses_bias:
        return _no_bias_reason(call)
    n = math.prod(dense_mask_shape(call))
    if call.q.device.type == "cpu" and n < (least := settings.get("FLEX_CPU_MIN_ELEMENTS")):
        if least == math.inf:
            return ("auto does not use compiled FlexAttention on CPU (torch's CPU flex kernel fails to compile some "
                    "score_mods; opt in by setting posenc.attention_settings.FLEX_CPU_MIN_ELEMENTS)")
        return (f"on CPU compiling FlexAttention (~30 s once) pays off only from "
                f"attention_settings.FLEX_CPU_MIN_ELEMENTS = {least} mask elements; this call has {n}")
    if call.q.device.type != "cpu" and n < (least := settings.get("FLEX_MIN_ELEMENTS")):
        return (f"a small call ({n} < attention_settings.FLEX_MIN_ELEMENTS = {least} mask elements) is cheaper "
                f"dense")
    return None


@register_backend("flex", priority=40, supports=_flex_supports, suits=_flex_suits)
def _flex(call: AttentionCall) -> Tensor:
    """FlexAttention: the encoding's ``score_mod`` and a ``block_mask``, compiled; no ``(Tq, Tk)`` tensor."""
    if call.q.numel() == 0 or call.k.shape[-2] == 0:
        # nothing to attend with or to (B, H, Tq or Tk of 0): flex's kernels fail to lower or compile such shapes;
        # the answer is known -- empty, or zeros for queries that see no key, as every backend gives
        return call.q.new_zeros(*call.q.shape[:-1], call.v.shape[-1])  # (B, H, Tq, Dv)
    score_mod = call.pe.score_mod(call.q_pos, call.k_pos) if call.uses_bias else None
    visible = flex_block_mask(call.q, call.k, causal=call.causal, attn_mask=call.attn_mask)  # a flex BlockMask
    return flex_forward(call.q, call.k, call.v, score_mod=score_mod, block_mask=visible, scale=call.scale,
                        enable_gqa=call.n_rep > 1)  # (B, H, Tq, Dv)


@register_backend("reference", priority=-100)
def _reference(call: AttentionCall) -> Tensor:
    """``normalize(terms(q k^T * scale) + bias, masked) v + value terms`` in float32 (float64 for float64 input),
    all rows at once; fully masked rows give 0."""
    return attend_explicit(call, 0, call.q.shape[-2], call.q, call.k, call.v)  # (B, H, Tq, Dv)


# The backends above, as registered: while BACKENDS holds exactly these, ``auto`` picks "sdpa" for every call with
# no bias and no terms (each faster backend's ``suits`` declines such a call: nothing to materialize), so
# :func:`attention` skips asking each backend and formatting its reasons (~80 us per call, a quarter of a small
# model's decode step). A backend registered later switches the shortcut off: ``auto`` asks everyone again.
_BUILTIN_BACKENDS: dict[str, Backend] = dict(BACKENDS)


def _auto_is_sdpa(call: AttentionCall) -> bool:
    """Whether ``auto`` would choose "sdpa" for ``call`` without asking each backend (see ``_BUILTIN_BACKENDS``)."""
    return (not call.uses_bias and call.terms is None and len(BACKENDS) == len(_BUILTIN_BACKENDS)
            and all(BACKENDS.get(name) is b for name, b in _BUILTIN_BACKENDS.items()))


# -- entry point -------------------------------------------------------------------------------------------------------
def attention(q: Tensor, k: Tensor, v: Tensor, pe: PositionalEncoding | None = None, *, q_pos: Tensor | None = None,
              k_pos: Tensor | None = None, causal: bool = False, attn_mask: Tensor | None = None,
              backend: str = "auto", scale: float | None = None, positions: Positions | None = None,
              features: Mapping[str, Tensor] | None = None, layer: LayerView | None = None) -> Tensor:
    """Scaled dot-product attention with a positional encoding's bias or attention terms applied.

    Rotary encodings are applied *before* this call (``q, k = pe.rotate(q, k, q_pos, k_pos)``), because a KV cache
    stores keys already rotated; this function applies what acts inside attention (``bias``/``score_mod``, or the
    encoding's attention ``terms``).

    Args:
        q: ``(B, H, Tq, D)`` queries.
        k: ``(B, Hkv, Tk, D)`` keys; ``H % Hkv == 0`` (grouped-query attention when ``Hkv < H``).
        v: ``(B, Hkv, Tk, Dv)`` values.
        pe: the positional encoding, or ``None``.
        q_pos: int64 ``(Tq,)`` or ``(B, Tq)``; default ``Tk - Tq .. Tk - 1`` (the last ``Tq`` keys' positions).
        k_pos: int64 ``(Tk,)`` or ``(B, Tk)``; default ``0 .. Tk - 1``.
        causal: mask keys after each query (by index, bottom-right aligned; see the module docstring).
        attn_mask: bool (True = may attend) or additive float mask broadcastable to ``(B, H, Tq, Tk)``.
        backend: ``"auto"``, or a name in ``BACKENDS``: ``"sdpa"``, ``"dense"``, ``"chunked"``, ``"flex"``,
            ``"reference"`` (see the module docstring). A named backend that cannot compute the call
            exactly raises ``ValueError`` with the reason; it never falls back silently.
        scale: softmax scale, default ``1 / sqrt(D)``; ``1 / sqrt(pe.head_dim)`` when ``pe`` widens q/k to
            ``D = pe.rotated_width(pe.head_dim)`` (PoPE), the scale of the heads before the rotation.
        positions: instead of ``q_pos``/``k_pos``, a :class:`posenc.Positions` holding them (``pos``, ``key_pos``),
            as a model passes to every layer. When it is ``validated`` (``Positions.validate``, which the model runs
            once per forward) the position values are not checked again here (their shapes and devices still are),
            so a layer's call costs no device sync.
        features: every key's per-token features ``{name: (B|1, Hkv|H|1, Tk, X)}``, as the encoding's
            ``features(x, pos, layer=...)`` hook makes them (a model caches them beside k and v); the queries' own
            are the last ``Tq``. Only encodings that read the layer's input need them.
        layer: the :class:`posenc.LayerView` of the layer the call serves (its index, head counts, own q/k
            projections), for encodings that read it.

    Returns:
        ``(B, H, Tq, Dv)`` in the dtype of ``q``.
    """
    call = prepare_call(q, k, v, pe, q_pos=q_pos, k_pos=k_pos, causal=causal, attn_mask=attn_mask, scale=scale,
                        positions=positions, features=features, layer=layer)
    if backend == "auto" and _auto_is_sdpa(call) and (torch.compiler.is_compiling()
                                                     or not logger.isEnabledFor(logging.DEBUG)):
        return _sdpa(call)
    chosen, reason = _choose(call, backend)
    if backend == "auto" and not torch.compiler.is_compiling() and logger.isEnabledFor(logging.DEBUG):
        logger.debug("auto chose %s: %s [%s]", chosen.name, reason, describe(call))
    return chosen.fn(call)


def explain(q: Tensor, k: Tensor, v: Tensor, pe: PositionalEncoding | None = None, *, backend: str = "auto",
            **kwargs) -> str:
    """Which backend :func:`posenc.attention` would use for these arguments, and why (no attention is computed).

    Takes the same arguments as :func:`attention`. The answer reads ``"<backend>: <why> [<facts>]"``, where the
    facts are what ``auto`` decides on (device, dtype, whether gradients are needed, the bias, the dense mask size)
    and the *why* lists every higher-priority backend that was skipped with its reason. It runs the encoding's
    ``terms(call)`` hook (which is pure) but no attention and no ``commit``.

    Example:
        >>> posenc.explain(q, k, v, pe, causal=True)  # doctest: +SKIP
        'chunked: highest-priority backend that supports and suits this call (skipped: flex: FlexAttention on CPU
        is forward-only ...) [device=cpu, dtype=float32, grad=True, causal=True, bias=alibi, dense mask
        (1, 8, 8192, 8192) = 2.0 GiB in float32]'
    """
    call = prepare_call(q, k, v, pe, **kwargs)
    chosen, reason = _choose(call, backend)
    return f"{chosen.name}: {reason} [{describe(call)}]"


def _choose(call: AttentionCall, backend: str) -> tuple[Backend, str]:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str; got {type(backend).__name__}.")
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose 'auto' or one of {sorted(BACKENDS)}.")
        chosen = BACKENDS[backend]
        why_not = chosen.supports(call)
        if why_not is not None:
            raise ValueError(f"backend {backend!r} cannot compute this call exactly: {why_not}. Use backend='auto'.")
        return chosen, "requested"
    skipped = []
    for candidate in sorted(BACKENDS.values(), key=lambda b: -b.priority):
        if candidate.name == "reference":
            continue
        why_not = candidate.supports(call) or candidate.suits(call)
        if why_not is None:
            extra = f" (skipped {_join_skipped(skipped)})" if skipped else ""
            return candidate, f"highest-priority backend that supports and suits this call{extra}"
        skipped.append((candidate.name, why_not))
    return BACKENDS["reference"], f"no faster backend supports this call (skipped {_join_skipped(skipped)})"


def _join_skipped(skipped: list[tuple[str, str]]) -> str:
    """``[(name, reason), ...]`` as ``"a, b: reason; c: other reason"`` (backends with one reason share it)."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped:
        by_reason.setdefault(reason, []).append(name)
    return "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items())


def prepare_call(q: Tensor, k: Tensor, v: Tensor, pe: PositionalEncoding | None, *, q_pos: Tensor | None = None,
                 k_pos: Tensor | None = None, causal: bool = False, attn_mask: Tensor | None = None,
                 scale: float | None = None, positions: Positions | None = None,
                 features: Mapping[str, Tensor] | None = None, layer: LayerView | None = None) -> AttentionCall:
    """The validated :class:`~posenc.terms.AttentionCall` of :func:`attention`'s arguments, with the encoding's terms.

    Every check of the call happens here, once, before any backend runs; the encoding's ``terms(call)`` hook is
    called last, with the validated call.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor of shape (B, H, T, D); got {type(t).__name__}.")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, T, D) = 4 dims; got shape {tuple(t.shape)}. Hint: "
                             f"x.view(B, T, H, D).transpose(1, 2) turns (B, T, H*D) into (B, H, T, D).")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor; got {t.dtype}.")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}.")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device; got {q.device}, {k.device}, {v.device}.")
    (b, h, tq, d), (bk, hk, tk, dk), (bv, hv, tv, _) = q.shape, k.shape, v.shape
    if not (b == bk == bv):
        raise ValueError(f"batch sizes differ: q {b}, k {bk}, v {bv}.")
    if d != dk:
        raise ValueError(f"q and k must share head_dim; got {d} and {dk}.")
    if hk != hv or tk != tv:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must agree on heads and length.")
    if hk == 0 or h % hk:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({hk}) for grouped-query "
                         f"attention.")
    if pe is not None and not isinstance(pe, PositionalEncoding):
        raise TypeError(f"pe must be a posenc PositionalEncoding or None; got {type(pe).__name__}. "
                        f"Hint: posenc.get_encoding(name, dim=..., n_heads=...).")
    if pe is not None and (pe.uses_bias or pe.uses_terms) and pe.n_heads != h:
        raise ValueError(f"{pe.name} was built for n_heads={pe.n_heads} but q has {h} heads.")
    check_bool(causal, "posenc.attention: causal", hint="True masks the keys after each query.")
    if causal and tq > tk:
        raise ValueError(f"causal attention needs Tq <= Tk (queries are the last Tq keys); got Tq={tq}, Tk={tk}.")
    if attn_mask is not None:
        _check_mask(attn_mask, (b, h, tq, tk), q)
        attn_mask = _normalize_mask(attn_mask, q.dtype)
    features = _check_features(features, b, h, tk, q.device)
    if pe is not None and pe.uses_features and tq > tk:
        raise ValueError(f"{pe.name} reads features of the layer's input, one per key, and each query's own are those "
                         f"of the key it sits at (query i is key Tk - Tq + i); this call has more queries (Tq={tq}) "
                         f"than keys (Tk={tk}), so some queries have none. Pass the queries' own keys too (Tq <= Tk, "
                         f"as in self-attention and KV-cache decoding).")
    if layer is not None and not isinstance(layer, LayerView):
        raise TypeError(f"layer must be a posenc.LayerView or None; got {type(layer).__name__}.")
    if layer is None and pe is not None and pe.reads_layer:
        raise ValueError(f"{pe.name} reads the attention layer it serves (its own q/k projections): pass "
                         f"layer=posenc.LayerView(...) to posenc.attention (a posenc.Transformer passes its own).")
    check = check_positions
    if positions is not None:
        if not isinstance(positions, Positions):
            raise TypeError(f"positions must be a posenc.Positions; got {type(positions).__name__}. Hint: pass "
                            f"position tensors as q_pos= and k_pos=.")
        if q_pos is not None or k_pos is not None:
            raise ValueError("pass positions=Positions(...) or q_pos=/k_pos=, not both.")
        q_pos = positions.pos
        k_pos = positions.pos if positions.key_pos is None else positions.key_pos
        if positions.validated:  # checked once where they entered (the model's forward): shapes only, no sync
            check = _check_layout
    q_pos = check(q_pos, tq, name="q_pos", batch=b, device=q.device)
    k_pos = check(k_pos, tk, name="k_pos", batch=b, device=q.device)
    if k_pos is None:
        k_pos = default_positions(tk, device=q.device)
    if q_pos is None:  # the queries are the last Tq keys (self-attention, KV-cache decoding)
        q_pos = default_positions(tq, offset=max(tk - tq, 0), device=q.device)
    if scale is not None and not torch.compiler.is_compiling():  # a traced call may carry a symbolic float
        # NaN or inf would make every output NaN without a word; a str or bool is a slip, never a scale
        check_number(scale, "posenc.attention: scale", hint="Leave it None for 1 / sqrt(head_dim).")
    if scale is None:
        # An encoding that widens q/k (PoPE: 2 * head_dim) keeps the scale of its original heads; any other width
        # (every other encoding, or q/k not rotated by pe) is scaled by its own.
        width = d
        if pe is not None and d != pe.head_dim and pe.uses_rotate and pe.rotated_width(pe.head_dim) == d:
            width = pe.head_dim
        scale = 1.0 / math.sqrt(width)
    else:
        scale = float(scale)
    call = AttentionCall(q, k, v, pe, q_pos, k_pos, causal, attn_mask, scale, features, layer)
    if pe is not None and pe.uses_terms:
        call.terms = pe.terms(call)
    return call


def _check_features(features: Mapping[str, Tensor] | None, batch: int, heads: int, keys: int,
                    device: torch.device) -> dict[str, Tensor]:
    """``features`` as a dict after checking each is ``(B|1, heads|1|divisor, Tk, X)`` on ``device``."""
    if features is None:
        return {}
    if not isinstance(features, Mapping):
        raise TypeError(f"features must be a dict {{name: tensor}}; got {type(features).__name__}.")
    for name, f in features.items():
        if not isinstance(name, str) or not isinstance(f, Tensor):
            raise TypeError(f"features must map names (str) to tensors; got {name!r}: {type(f).__name__}.")
        if f.dim() != 4 or f.shape[0] not in (1, batch) or f.shape[2] != keys or heads % max(1, f.shape[1]):
            raise ValueError(f"features[{name!r}] must have shape (B|1, heads, Tk, X) with B={batch}, a number of "
                             f"heads dividing {heads} and Tk={keys} (one entry per key, cached keys first); got "
                             f"{tuple(f.shape)}.")
        if f.device != device:
            raise ValueError(f"features[{name!r}] is on {f.device} but q is on {device}.")
    return dict(features)


def _check_layout(pos: Tensor | None, length: int, *, name: str, batch: int, device: torch.device) -> Tensor | None:
    if pos is not None:
        check_positions_layout(pos, length, name=name, batch=batch, device=device)
    return pos


def _check_mask(mask: Tensor, target: tuple[int, int, int, int], q: Tensor) -> None:
    if not isinstance(mask, Tensor):
        raise TypeError(f"attn_mask must be a tensor; got {type(mask).__name__}.")
    if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
        raise TypeError(f"attn_mask must be bool (True = attend) or a float additive mask; got {mask.dtype}.")
    if mask.device != q.device:
        raise ValueError(f"attn_mask is on {mask.device} but q is on {q.device}.")
    shape = tuple(mask.shape)
    ok = mask.dim() <= 4 and all(m in (1, t) for m, t in zip(shape[::-1], target[::-1]))
    if not ok:
        raise ValueError(f"attn_mask of shape {shape} does not broadcast to (B, H, Tq, Tk) = {target}; each dim must "
                         f"be 1 or match.")


def _normalize_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A checked ``attn_mask`` as every backend takes it: 4-D (a view), a float mask in a dtype SDPA accepts.

    ``(Tk,)`` or ``(Tq, Tk)`` masks gain leading size-1 dims (SDPA and the slicing in :mod:`posenc.blocks` index
    ``shape[-2]``); a float mask in another dtype than the queries (float16 with bfloat16 queries, say) is cast to
    float64 for float64 queries and float32 otherwise, which holds every float16/bfloat16 value exactly.
    """
    if mask.dim() < 4:
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if mask.dtype != torch.bool and mask.dtype != dtype:
        mask = mask.to(torch.float64 if dtype == torch.float64 else torch.float32)
    return mask
