"""FlexAttention mechanics behind ``posenc.attention(..., backend="flex")``: block masks, the compiled kernel, the call.

When ``flex`` applies and when ``auto`` picks it is :mod:`posenc.backends`' business (its cost model); this module
only builds what :func:`torch.nn.attention.flex_attention` takes and calls it:

- :func:`flex_block_mask`: the causal mask (bottom-right aligned, from block arithmetic: :func:`causal_flex_block_mask`,
  cached per shape) and a bool ``attn_mask`` (through ``create_block_mask``) as one ``BlockMask``;
- :func:`flex_forward`: ``flex_attention`` compiled once per process (traced directly when the caller is already
  under ``torch.compile``), with dynamo's recompile limit raised and made an error: past it dynamo would silently run
  Flex eagerly, materializing the full score matrix.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["HAVE_CXX", "causal_flex_block_mask", "flex_block_mask", "flex_forward", "flex_module"]

_FLEX_COMPILED: dict[bool, Callable] = {}  # static shapes (CPU) or not -> torch.compile(flex_attention)

# Whether a C++ compiler is on PATH (torch.compile's CPU backend needs one for FlexAttention on CPU). Looked up once,
# at import: not inside attention(), which torch.compile traces (dynamo cannot trace the file-system lookup).
HAVE_CXX = shutil.which("g++") is not None or shutil.which("clang++") is not None


def flex_module():
    """``torch.nn.attention.flex_attention`` (the module), or ``None`` on a torch without it (< 2.5)."""
    try:
        from torch.nn.attention import flex_attention as flex
    except ImportError:
        return None
    return flex


_CAUSAL_BLOCK_MASKS: dict[tuple[int, int, str], object] = {}  # (Tq, Tk, device) -> BlockMask, oldest first


def causal_flex_block_mask(q_len: int, k_len: int, device: torch.device | str, *, block: int = 128):
    """The bottom-right causal FlexAttention ``BlockMask`` without evaluating the mask on the ``(Tq, Tk)`` grid.

    A ``block x block`` tile of query block ``i`` and key block ``j`` is *full* when every key in it is at or before
    the first query's key index (``Tk - Tq + i * block``), *partial* (the mask is applied inside it) when only some
    are, and skipped otherwise; tiles cut by the sequence ends count as partial. The result equals
    ``create_block_mask`` of the same mask (``tests/test_attention_backends.py`` checks it) at ``O((T / block)^2)``
    memory instead of ``O(Tq * Tk)``.
    """
    flex = flex_module()
    offset = k_len - q_len  # query i sits at key index offset + i

    def causal_mod(b_idx, h_idx, q_idx, kv_idx):
        return kv_idx <= q_idx + offset

    n_q, n_k = -(-q_len // block), -(-k_len // block)
    qi = torch.arange(n_q, device=device)[:, None]  # (nq, 1)
    kj = torch.arange(n_k, device=device)[None, :]  # (1, nk)
    q_first, q_last = qi * block, torch.clamp((qi + 1) * block, max=q_len) - 1
    k_first, k_last = kj * block, torch.clamp((kj + 1) * block, max=k_len) - 1
    whole = ((qi + 1) * block <= q_len) & ((kj + 1) * block <= k_len)
    full = (k_last <= offset + q_first) & whole  # (nq, nk)
    partial = (k_first <= offset + q_last) & ~full

    def as_blocks(m: Tensor) -> tuple[Tensor, Tensor]:
        # (1, 1, nq) counts and (1, 1, nq, nk) indices with the selected key blocks first, in order
        order = torch.argsort((~m).to(torch.int32), dim=-1, stable=True)
        return m.sum(-1).to(torch.int32)[None, None], order.to(torch.int32)[None, None]

    return flex.BlockMask.from_kv_blocks(*as_blocks(partial), *as_blocks(full), BLOCK_SIZE=block,
                                         mask_mod=causal_mod, seq_lengths=(q_len, k_len))


def flex_block_mask(q: Tensor, k: Tensor, *, causal: bool, attn_mask: Tensor | None):
    """A FlexAttention ``BlockMask`` for the causal mask and a bool ``attn_mask``, or ``None`` without either.

    ``q`` ``(B, H, Tq, D)``, ``k`` ``(B, Hkv, Tk, D)``; ``attn_mask`` bool, broadcastable to ``(B, H, Tq, Tk)``.
    """
    flex = flex_module()
    b, h, q_len, _ = q.shape
    k_len = k.shape[-2]
    mods = []
    batch_dims: tuple[int | None, int | None] = (None, None)
    if causal:
        offset = k_len - q_len  # bottom-right: query i sits at key index offset + i

        def causal_mod(b_idx, h_idx, q_idx, kv_idx):
            return kv_idx <= q_idx + offset

        mods.append(causal_mod)
    if attn_mask is not None:
        m = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
        batch_dims = (b if m.shape[0] > 1 else None, h if m.shape[1] > 1 else None)
        m = m.expand(b, h, q_len, k_len)  # a view: no copy

        def mask_mod(b_idx, h_idx, q_idx, kv_idx):
            return m[b_idx, h_idx, q_idx, kv_idx]

        mods.append(mask_mod)
    if not mods:
        return None
    if attn_mask is None:  # causal only: built from block arithmetic, O((T / 128)^2) integers
        key = (q_len, k_len, str(q.device))
        if key not in _CAUSAL_BLOCK_MASKS:  # every layer of a model asks for the same one
            if len(_CAUSAL_BLOCK_MASKS) >= 8:
                _CAUSAL_BLOCK_MASKS.pop(next(iter(_CAUSAL_BLOCK_MASKS)))
            _CAUSAL_BLOCK_MASKS[key] = causal_flex_block_mask(q_len, k_len, q.device)
        return _CAUSAL_BLOCK_MASKS[key]
    mod = mods[0] if len(mods) == 1 else flex.and_masks(*mods)
    # Eager create_block_mask evaluates mask_mod on the whole (Tq, Tk) grid (int64 indices: 8 bytes per pair);
    # compiled, it works block by block. On CPU compiling it would add another ~30 s, so only on GPU.
    return flex.create_block_mask(mod, batch_dims[0], batch_dims[1], q_len, k_len, device=q.device,
                                  _compile=q.device.type != "cpu")


def _compiled_flex(device: torch.device) -> Callable:
    """``flex_attention`` compiled once per process; on CPU with static shapes.

    On CPU, dynamo's second call with new sequence lengths recompiles with *dynamic* shapes, and torch 2.13's CPU
    flex template then fails to compile a score_mod (C++ error ``cur_qSplitSize<N> was not declared``) for any
    Tq != Tk; static shapes compile every length it met (one compile per shape, within the recompile limit below).
    """
    flex = flex_module()
    if torch.compiler.is_compiling():  # already inside the caller's torch.compile: let it trace flex directly
        return flex.flex_attention
    static = device.type == "cpu"
    if static not in _FLEX_COMPILED:
        _FLEX_COMPILED[static] = torch.compile(flex.flex_attention, dynamic=False if static else None)
    return _FLEX_COMPILED[static]


def flex_forward(q: Tensor, k: Tensor, v: Tensor, *, score_mod: Callable | None, block_mask, scale: float,
                 enable_gqa: bool) -> Tensor:
    """``flex_attention(q, k, v)`` compiled, with ``score_mod`` and ``block_mask``: ``(B, H, Tq, Dv)``."""
    # Each encoding's score_mod (and causal/masked, dtype, ...) is its own compiled graph. Past dynamo's recompile
    # limit (8) dynamo would silently run Flex *eagerly*, which materializes the full score matrix (and has no
    # backward for some score_mods): allow more graphs, and make hitting the limit an error instead.
    limits = {name: max(getattr(torch._dynamo.config, name), 64) for name in ("recompile_limit", "cache_size_limit")
              if hasattr(torch._dynamo.config, name)}
    fail = {name: True for name in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit")
            if hasattr(torch._dynamo.config, name)}
    with torch._dynamo.config.patch(**limits, **fail):
        return _compiled_flex(q.device)(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                                enable_gqa=enable_gqa)  # (B, H, Tq, Dv)
