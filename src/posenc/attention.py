"""One attention entry point for every encoding: :func:`attention` picks a backend, never an encoding's name.

Shapes: ``q`` is ``(B, H, Tq, D)``, ``k`` is ``(B, Hkv, Tk, D)`` and ``v`` is ``(B, Hkv, Tk, Dv)`` with ``H`` a
multiple of ``Hkv`` (grouped-query attention). Positions are int64 ``(T,)`` or ``(B, T)``.

Backends (``backend=``):

- ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient / math kernels).
  An encoding's ``bias`` is materialized as a dense ``(B|1, H, Tq, Tk)`` float mask first.
- ``"reference"``: explicit softmax math in float32 (float64 for float64 input), the oracle for tests.
- ``"auto"``: the encoding's own ``attend`` when it has one, else ``sdpa``. :func:`explain` says which and why.

More backends (FlexAttention ``score_mod``, chunked bias attention) register themselves with
:func:`register_backend`; ``auto`` consults each backend's ``supports`` check in priority order.

Causal masking is by *index*, aligned bottom-right: query ``i`` of ``Tq`` sits at key index ``Tk - Tq + i``, which
is right for KV-cache decoding (the new queries are the last tokens) and independent of position values (which may
be randomized or restart per packed document; mask documents with ``attn_mask``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from posenc.base import PositionalEncoding, check_positions, default_positions

__all__ = ["AttentionCall", "attention", "explain", "register_backend", "BACKENDS"]


@dataclasses.dataclass
class AttentionCall:
    """Everything a backend needs, validated once by :func:`attention`."""

    q: Tensor  # (B, H, Tq, D)
    k: Tensor  # (B, Hkv, Tk, D)
    v: Tensor  # (B, Hkv, Tk, Dv)
    pe: PositionalEncoding | None
    q_pos: Tensor  # (Tq,) or (B, Tq) int64
    k_pos: Tensor  # (Tk,) or (B, Tk) int64
    causal: bool
    attn_mask: Tensor | None  # bool (True = attend) or float additive, broadcastable to (B, H, Tq, Tk)
    scale: float

    @property
    def n_rep(self) -> int:
        return self.q.shape[1] // self.k.shape[1]


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable[[AttentionCall], Tensor]
    supports: Callable[[AttentionCall], str | None]  # None if it can run this call, else why not
    priority: int  # auto tries higher first


BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, *, priority: int = 0,
                     supports: Callable[[AttentionCall], str | None] = lambda call: None):
    """Decorator: add ``fn(call: AttentionCall) -> (B, H, Tq, Dv)`` as ``backend=name``.

    ``supports(call)`` returns ``None`` when the backend can compute this call exactly, or a reason why not; ``auto``
    picks the highest-priority backend that supports the call.
    """

    def decorator(fn: Callable[[AttentionCall], Tensor]) -> Callable[[AttentionCall], Tensor]:
        BACKENDS[name] = Backend(name, fn, supports, priority)
        return fn

    return decorator


# -- masks --------------------------------------------------------------------------------------------------------------
def causal_mask(q_len: int, k_len: int, device: torch.device) -> Tensor:
    """Bool ``(Tq, Tk)``, True where query ``i`` (at key index ``Tk - Tq + i``) may attend key ``j``."""
    q_idx = torch.arange(k_len - q_len, k_len, device=device)
    return torch.arange(k_len, device=device) <= q_idx[:, None]


def combined_mask(call: AttentionCall, dtype: torch.dtype, *, with_bias: bool = True) -> Tensor | None:
    """The causal mask, ``attn_mask`` and the encoding's dense bias as one additive float mask (or a bool mask)."""
    q, k = call.q, call.k
    bias = call.pe.bias(call.q_pos, call.k_pos) if (with_bias and call.pe is not None and call.pe.uses_bias) else None
    mask = call.attn_mask
    if call.causal:
        cm = causal_mask(q.shape[-2], k.shape[-2], q.device)
        if mask is None:
            mask = cm
        elif mask.dtype == torch.bool:
            mask = mask & cm
        else:
            mask = mask.masked_fill(~cm, float("-inf"))
    if bias is None:
        return mask
    bias = bias.to(dtype)
    if bias.dim() == 3:  # (H, Tq, Tk) -> (1, H, Tq, Tk)
        bias = bias.unsqueeze(0)
    if mask is None:
        return bias
    if mask.dtype == torch.bool:
        return bias.masked_fill(~mask, float("-inf"))
    return bias + mask.to(dtype)


# -- backends -----------------------------------------------------------------------------------------------------------
def _sdpa_supports(call: AttentionCall) -> str | None:
    return None


@register_backend("sdpa", priority=10, supports=_sdpa_supports)
def _sdpa(call: AttentionCall) -> Tensor:
    q, k, v = call.q, call.k, call.v
    uses_bias = call.pe is not None and call.pe.uses_bias
    if call.causal and call.attn_mask is None and not uses_bias and q.shape[-2] == k.shape[-2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=call.scale, enable_gqa=call.n_rep > 1)
    mask = combined_mask(call, q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=call.scale, enable_gqa=call.n_rep > 1)


@register_backend("reference", priority=-100)
def _reference(call: AttentionCall) -> Tensor:
    """softmax(q k^T * scale + bias + mask) v in float32 (float64 for float64 input); fully masked rows give 0."""
    compute = torch.promote_types(call.q.dtype, torch.float32)
    q, k, v = call.q.to(compute), call.k.to(compute), call.v.to(compute)
    if call.n_rep > 1:  # (B, Hkv, Tk, D) -> (B, H, Tk, D): kv head j serves query heads j*n_rep .. (j+1)*n_rep-1
        k, v = k.repeat_interleave(call.n_rep, dim=1), v.repeat_interleave(call.n_rep, dim=1)
    scores = (q @ k.transpose(-2, -1)) * call.scale  # (B, H, Tq, Tk)
    mask = combined_mask(call, compute)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no allowed key is NaN -> 0
    return (probs @ v).to(call.q.dtype)  # (B, H, Tq, Dv)


def _attend_supports(call: AttentionCall) -> str | None:
    return None if (call.pe is not None and call.pe.uses_attend) else "the encoding has no attend()"


@register_backend("attend", priority=100, supports=_attend_supports)
def _attend(call: AttentionCall) -> Tensor:
    return call.pe.attend(call.q, call.k, call.v, q_pos=call.q_pos, k_pos=call.k_pos, causal=call.causal,
                          attn_mask=call.attn_mask, scale=call.scale)


# -- entry point --------------------------------------------------------------------------------------------------------
def attention(q: Tensor, k: Tensor, v: Tensor, pe: PositionalEncoding | None = None, *, q_pos: Tensor | None = None,
              k_pos: Tensor | None = None, causal: bool = False, attn_mask: Tensor | None = None,
              backend: str = "auto", scale: float | None = None) -> Tensor:
    """Scaled dot-product attention with a positional encoding's bias or custom attention applied.

    Rotary encodings are applied *before* this call (``q, k = pe.rotate(q, k, q_pos, k_pos)``), because a KV cache
    stores keys already rotated; this function applies what acts inside attention (``bias``/``score_mod``/``attend``).

    Args:
        q: ``(B, H, Tq, D)`` queries.
        k: ``(B, Hkv, Tk, D)`` keys; ``H % Hkv == 0`` (grouped-query attention when ``Hkv < H``).
        v: ``(B, Hkv, Tk, Dv)`` values.
        pe: the positional encoding, or ``None``.
        q_pos: int64 ``(Tq,)`` or ``(B, Tq)``; default ``Tk - Tq .. Tk - 1`` (the last ``Tq`` keys' positions).
        k_pos: int64 ``(Tk,)`` or ``(B, Tk)``; default ``0 .. Tk - 1``.
        causal: mask keys after each query (by index, bottom-right aligned; see the module docstring).
        attn_mask: bool (True = may attend) or additive float mask broadcastable to ``(B, H, Tq, Tk)``.
        backend: ``"auto"``, or a name in ``BACKENDS`` (``"sdpa"``, ``"reference"``, ...).
        scale: softmax scale, default ``1 / sqrt(D)``.

    Returns:
        ``(B, H, Tq, Dv)`` in the dtype of ``q``.
    """
    call = _prepare(q, k, v, pe, q_pos=q_pos, k_pos=k_pos, causal=causal, attn_mask=attn_mask, scale=scale)
    chosen, _ = _choose(call, backend)
    return chosen.fn(call)


def explain(q: Tensor, k: Tensor, v: Tensor, pe: PositionalEncoding | None = None, *, backend: str = "auto",
            **kwargs) -> str:
    """Which backend :func:`attention` would use for these arguments, and why (no attention is computed)."""
    call = _prepare(q, k, v, pe, **kwargs)
    chosen, reason = _choose(call, backend)
    return f"{chosen.name}: {reason}"


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
        if call.pe is not None and call.pe.uses_attend and backend not in ("attend", "reference"):
            raise ValueError(f"backend {backend!r} would skip {call.pe.name}'s own attend(); use backend='auto'.")
        return chosen, "requested"
    if call.pe is not None and call.pe.uses_attend:
        return BACKENDS["attend"], f"{call.pe.name} changes attention itself (attend)"
    skipped = []
    for candidate in sorted(BACKENDS.values(), key=lambda b: -b.priority):
        if candidate.name in ("attend", "reference"):
            continue
        why_not = candidate.supports(call)
        if why_not is None:
            extra = f" (skipped: {'; '.join(skipped)})" if skipped else ""
            return candidate, f"highest-priority backend that supports this call{extra}"
        skipped.append(f"{candidate.name}: {why_not}")
    return BACKENDS["reference"], f"no faster backend supports this call ({'; '.join(skipped)})"


def _prepare(q: Tensor, k: Tensor, v: Tensor, pe: PositionalEncoding | None, *, q_pos: Tensor | None = None,
             k_pos: Tensor | None = None, causal: bool = False, attn_mask: Tensor | None = None,
             scale: float | None = None) -> AttentionCall:
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
    if pe is not None and (pe.uses_bias or pe.uses_attend) and pe.n_heads != h:
        raise ValueError(f"{pe.name} was built for n_heads={pe.n_heads} but q has {h} heads.")
    if causal and tq > tk:
        raise ValueError(f"causal attention needs Tq <= Tk (queries are the last Tq keys); got Tq={tq}, Tk={tk}.")
    if attn_mask is not None:
        _check_mask(attn_mask, (b, h, tq, tk), q)
    q_pos = check_positions(q_pos, tq, name="q_pos", batch=b, device=q.device)
    k_pos = check_positions(k_pos, tk, name="k_pos", batch=b, device=q.device)
    if k_pos is None:
        k_pos = default_positions(tk, device=q.device)
    if q_pos is None:  # the queries are the last Tq keys (self-attention, KV-cache decoding)
        q_pos = default_positions(tq, offset=max(tk - tq, 0), device=q.device)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    return AttentionCall(q, k, v, pe, q_pos, k_pos, bool(causal), attn_mask, scale)


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
