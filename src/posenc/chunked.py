"""The ``chunked`` backend: attention in blocks of query rows, ``O(rows * Tk)`` extra memory forward and backward.

Each block builds only its own mask (encodings with a bias: :func:`posenc.blocks.attend_sdpa`) or its own scores,
logit terms, normaliser and value terms (encodings with attention terms: :func:`posenc.blocks.attend_explicit`).
Causal blocks skip the keys none of their rows may see. Under autograd each block is recomputed in the backward pass:
terms that declare their per-call tensors (``AttentionTerms.call_tensors``) run inside :class:`ChunkedTerms`, which
differentiates the core by hand and accumulates the q/k/v gradients in place; the rest are checkpointed per block.
Block sizes come from :mod:`posenc.attention_settings` (``CHUNK_ELEMENTS``, ``TERMS_BUDGET_SHARE``, ``TERMS_MIN_ROWS``).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from posenc import attention_settings as settings
from posenc.blocks import attend_explicit, attend_sdpa, block_weights, make_block
from posenc.terms import AttentionCall, AttentionTerms, compute_dtype

__all__ = ["ChunkedTerms", "chunk_rows", "chunked_attention", "dense_mask_shape"]


def dense_mask_shape(call: AttentionCall) -> tuple[int, int, int, int]:
    """Shape of the float mask ``dense`` materializes: ``(B or 1, H, Tq, Tk)`` (always ``B`` with terms)."""
    b, h, tq, _ = call.q.shape
    batched = call.uses_terms or any(p.dim() == 2 and p.shape[0] > 1 for p in (call.q_pos, call.k_pos)) or (
        call.attn_mask is not None and call.attn_mask.dim() == 4 and call.attn_mask.shape[0] > 1)
    return (b if batched else 1, h, tq, call.k.shape[-2])


def chunk_rows(call: AttentionCall) -> int:
    """Query rows per ``chunked`` block: about ``settings.CHUNK_ELEMENTS`` mask elements per block, at least 16 rows.

    With attention terms the terms' ``pair_tensors`` score-sized tensors share ``settings.CHUNK_ELEMENTS //
    settings.TERMS_BUDGET_SHARE`` elements, at least ``settings.TERMS_MIN_ROWS`` rows.
    """
    b, h, q_len, _ = dense_mask_shape(call)
    per_row = b * h * call.k.shape[-2]
    elements = settings.get("CHUNK_ELEMENTS")
    if call.uses_terms:
        budget = elements // settings.get("TERMS_BUDGET_SHARE") // max(1, call.terms.pair_tensors)
        return max(1, min(q_len, max(settings.get("TERMS_MIN_ROWS"), budget // max(1, per_row))))
    return max(1, min(q_len, max(16, elements // max(1, per_row))))


def _blocks(call: AttentionCall, rows: int):
    """``(start, stop, key_stop)`` of each ``chunked`` block: causal blocks skip the keys none of their rows sees."""
    q_len, k_len = call.q.shape[2], call.k.shape[2]  # (B, H, T, D): a negative index mutates to an equal one
    for start in range(0, q_len, rows):
        stop = min(start + rows, q_len)
        # Causal: the block's last query sits at key index k_len - q_len + stop - 1; later keys are masked anyway.
        yield start, stop, (k_len - q_len + stop if call.causal else k_len)


def _add_grouped_matmul_(out: Tensor, a: Tensor, b: Tensor, n_rep: int, alpha: float = 1.0) -> None:
    """``out += alpha * a^T @ b`` summed over the ``n_rep`` query heads of each kv head, in place.

    ``out`` ``(B, Hkv, M, N)`` (a view into a gradient buffer), ``a`` ``(B, H, K, M)``, ``b`` ``(B, H, K, N)``: the
    heads of one group and their ``K`` rows form one contraction, so nothing ``(B, H, M, N)``-sized is allocated.
    """
    bsz, hkv, m, n = out.shape
    a = a.reshape(bsz * hkv, n_rep * a.shape[-2], m)  # (B*Hkv, n_rep*K, M): a view for a contiguous a
    b = b.reshape(bsz * hkv, n_rep * b.shape[-2], n)
    out.view(bsz * hkv, m, n).baddbmm_(a.transpose(-2, -1), b, alpha=alpha)


class _SliceLeaves:
    """The slices of per-call tensors that one recomputed block reads, each a leaf of its own (``slice_leaf``).

    Differentiated with respect to a slice (the block's rows of a query-side tensor, its keys of a key-side one), the
    block's gradient is the size of the slice; with respect to the whole tensor it would be a full-size tensor, zero
    outside the slice, for every block.
    """

    def __init__(self, tensors: list[Tensor]) -> None:
        self.which = {id(t): i for i, t in enumerate(tensors) if t.requires_grad}
        self.taken: list[tuple[int, tuple, Tensor]] = []  # (which tensor, the slice's index in it, the slice's leaf)

    def __call__(self, x: Tensor, index: tuple) -> Tensor:
        i = self.which.get(id(x))
        if i is None:
            return x[index]
        leaf = x[index].detach().requires_grad_()
        self.taken.append((i, index, leaf))
        return leaf

    @property
    def leaves(self) -> list[Tensor]:
        return [leaf for _, _, leaf in self.taken]


def _add_term_grads_(dt: list[Tensor | None], got: dict[int, Tensor], leaves: list[Tensor],
                     slices: _SliceLeaves) -> None:
    """Add one block's gradients of the terms' tensors ``leaves`` (``got``, by id) into ``dt``, in place.

    The gradient of a whole tensor (a parameter, or a per-call tensor read other than through ``query_rows`` or
    ``key_rows``) is added as it is; that of a slice goes into its rows of a full-size zero buffer, made once.
    """
    for i, leaf in enumerate(leaves):
        g = got.get(id(leaf))
        if g is not None:
            dt[i] = g.contiguous() if dt[i] is None else dt[i].add_(g)  # contiguous: written in place later
    for i, index, leaf in slices.taken:
        g = got.get(id(leaf))
        if g is not None:
            if dt[i] is None:
                dt[i] = torch.zeros_like(leaves[i])
            dt[i][index].add_(g)


class ChunkedTerms(torch.autograd.Function):
    """``chunked`` attention with terms under autograd, ``O(rows * Tk)`` extra memory beyond the gradients.

    The forward pass keeps nothing but its inputs. The backward pass recomputes one block at a time and sends its
    gradients straight into ``dq`` (the block's rows), ``dk``/``dv`` and the term tensors' gradients, allocated once:
    the core (``q k^T`` and ``probs @ v``) is differentiated by hand, with the products for ``dk`` and ``dv``
    accumulated in place (:func:`_add_grouped_matmul_`), and autograd differentiates only the terms, from the block's
    raw scores, with respect to the block's slices of the per-call tensors (:class:`_SliceLeaves`). Checkpointing
    each block (the fallback in :func:`chunked_attention`) would instead give every block a full-size
    ``(B, Hkv, Tk, D)`` gradient of ``k`` and ``v`` and a full-size ``(B, H, Tq, D)`` one of its ``q`` slice.
    """

    @staticmethod
    def forward(ctx, call: AttentionCall, rows: int, q: Tensor, k: Tensor, v: Tensor, *tensors: Tensor) -> Tensor:
        ctx.call, ctx.rows = call, rows
        ctx.save_for_backward(q, k, v, *tensors)
        out = q.new_empty(*q.shape[:-1], v.shape[-1])  # (B, H, Tq, Dv)
        for start, stop, key_stop in _blocks(call, rows):
            out[:, :, start:stop] = attend_explicit(call, start, stop, q[:, :, start:stop], k[:, :, :key_stop],
                                                  v[:, :, :key_stop])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        call, rows = ctx.call, ctx.rows
        q, k, v, *tensors = ctx.saved_tensors
        need_q, need_k, need_v, *need_t = ctx.needs_input_grad[2:]
        compute, n_rep, scale = compute_dtype(q), call.n_rep, call.scale
        dq = q.new_empty(q.shape, dtype=compute) if need_q else None  # every row is in one block: all written
        dk = k.new_zeros(k.shape, dtype=compute) if need_k else None
        dv = v.new_zeros(v.shape, dtype=compute) if need_v else None
        # The terms' per-call tensors (the first len(call_tensors) of tensors) become leaves of the recomputed blocks,
        # in a copy of the terms: their history belongs to the caller's graph, which autograd continues from the
        # gradients returned here. The encoding's parameters (the rest) are leaves already.
        names = call.terms.call_tensors
        leaves = [t.detach().requires_grad_(need) if i < len(names) else t
                  for i, (t, need) in enumerate(zip(tensors, need_t))]
        if names:
            terms = copy.copy(call.terms)
            for name, leaf in zip(names, leaves):
                setattr(terms, name, leaf)
            call = dataclasses.replace(call, terms=terms)
        dt: list[Tensor | None] = [None] * len(tensors)
        for start, stop, key_stop in _blocks(call, rows):
            blk = make_block(call, start, stop, q[:, :, start:stop], k[:, :, :key_stop], v[:, :, :key_stop])
            go = grad_out[:, :, start:stop].to(compute)  # (B, H, rows, Dv)
            with torch.enable_grad():
                # the terms may read blk.q, blk.k, blk.v: their own gradients
                qg = blk.q.detach().requires_grad_(need_q)
                kg = blk.k.detach().requires_grad_(need_k)
                vg = blk.v.detach().requires_grad_(need_v)
                slices = _SliceLeaves(leaves[:len(names)])
                blk_g = dataclasses.replace(blk, q=qg, k=kg, v=vg, slice_leaf=slices)
                shifted = None if call.terms.replaces_scores else call.terms.queries(blk_g)  # (B, H, rows, D)
            scores = None  # the raw scores (B, H, rows, keys), a leaf: their gradient gives the core's dq and dk
            if shifted is not None:
                scores = (shifted.detach() @ blk.k.transpose(-2, -1)) * scale
                scores.requires_grad_(need_k or shifted.requires_grad)
            with torch.enable_grad():
                probs = block_weights(call, blk_g, scores)
                extra = call.terms.values(probs, blk_g)
            inputs = [x for x in (scores, qg, kg, vg, *leaves, *slices.leaves) if x is not None and x.requires_grad]
            if need_v:  # the core's value gradient: probs^T @ grad_out, summed per kv head
                _add_grouped_matmul_(dv[:, :, :key_stop], probs.detach(), go, n_rep)
            grads = [None] * len(inputs)
            outputs, seeds = [], []
            if probs.requires_grad:
                outputs.append(probs)
                seeds.append(go @ blk.v.transpose(-2, -1))  # d probs from probs @ v: (B, H, rows, keys)
            # a value term may need a gradient when the weights do not (a parameter of its own, e.g. stick-breaking's
            # remainder vector, with q and k frozen)
            if extra is not None and extra.requires_grad:
                outputs.append(extra)
                seeds.append(go.to(extra.dtype))
            if outputs:
                grads = list(torch.autograd.grad(outputs, inputs, seeds, allow_unused=True))
            del probs, extra
            got = dict(zip(map(id, inputs), grads))
            d_scores = got.get(id(scores)) if scores is not None else None
            if need_k and d_scores is not None:  # dk from the scores: d_scores^T @ queries * scale
                _add_grouped_matmul_(dk[:, :, :key_stop], d_scores, shifted.detach(), n_rep, alpha=scale)
            if d_scores is not None and shifted is not qg:  # shifted queries: on to q and the terms' tensors
                through = [x for x in (qg, *leaves, *slices.leaves) if x.requires_grad]
                extra_grads = torch.autograd.grad(shifted, through, (d_scores @ blk.k) * scale, allow_unused=True)
                for x, g in zip(through, extra_grads):
                    if g is not None:
                        got[id(x)] = g if got.get(id(x)) is None else got[id(x)] + g
                d_scores = None
            if need_q:
                d_q = got.get(id(qg))
                d_q = torch.zeros_like(blk.q) if d_q is None else d_q
                if d_scores is not None:  # from the scores: d_scores @ k * scale
                    d_q = d_q + (d_scores @ blk.k) * scale
                dq[:, :, start:stop] = d_q
            for buf, got_x in ((dk, got.get(id(kg))), (dv, got.get(id(vg)))):
                if buf is not None and got_x is not None:  # a term's own k/v gradient, summed per kv head
                    b, h, keys, d = got_x.shape
                    buf[:, :, :key_stop] += got_x.view(b, h // n_rep, n_rep, keys, d).sum(2)
            _add_term_grads_(dt, got, leaves, slices)
            del grads, got, got_x  # this block's gradients, freed before the next block makes its own
        return (None, None, None if dq is None else dq.to(q.dtype), None if dk is None else dk.to(k.dtype),
                None if dv is None else dv.to(v.dtype), *dt)


def _check_call_tensors(terms: AttentionTerms, params: list[Tensor]) -> None:
    """Raise unless every tensor attribute of ``terms`` that requires grad is in its ``call_tensors`` or a parameter.

    :class:`ChunkedTerms` differentiates the recomputed blocks with respect to those only, so the gradient of any
    other tensor the block methods read would be lost without a word.
    """
    declared, param_ids = set(terms.call_tensors), {id(p) for p in params}
    missing = [name for name, x in vars(terms).items()
               if isinstance(x, Tensor) and x.requires_grad and name not in declared and id(x) not in param_ids]
    if missing:
        raise TypeError(f"{type(terms).__name__}: the attributes {missing} hold tensors that require grad but are not "
                        f"in call_tensors {terms.call_tensors}, so chunked would lose their gradients. List them in "
                        f"call_tensors (or declare call_tensors = None to checkpoint each block instead).")


def chunked_attention(call: AttentionCall) -> Tensor:
    """Query blocks of :func:`chunk_rows` rows, each with only its own mask; recomputed in the backward pass.

    Recomputing is what keeps the *backward* pass small too: SDPA saves its ``attn_mask`` for backward, so without
    it every block's mask would stay alive until backward and the total would be the dense mask again. With terms
    that declare what they read (``AttentionTerms.call_tensors``) the blocks run inside :class:`ChunkedTerms`;
    otherwise (and under ``torch.compile``) each block is checkpointed.
    """
    q, k, v = call.q, call.k, call.v
    rows = chunk_rows(call)
    if call.needs_grad and call.uses_terms and not torch.compiler.is_compiling() and (
            call.attn_mask is None or not call.attn_mask.requires_grad):
        names = call.terms.call_tensors
        if names is not None:  # the terms' per-call tensors first, then the encoding's parameters (the bias's too)
            tensors = [getattr(call.terms, name) for name in names]
            params = [p for p in call.pe.parameters() if p.requires_grad]
            _check_call_tensors(call.terms, params)
            return ChunkedTerms.apply(call, rows, q, k, v, *tensors, *params)
    recompute = call.needs_grad
    block = attend_explicit if call.uses_terms else attend_sdpa
    outs = []
    for start, stop, key_stop in _blocks(call, rows):
        args = (call, start, stop, q[:, :, start:stop], k[:, :, :key_stop], v[:, :, :key_stop])
        if recompute:
            outs.append(checkpoint(block, *args, use_reentrant=False, preserve_rng_state=False))
        else:
            outs.append(block(*args))
    if not outs:
        return q.new_zeros(*q.shape[:-1], v.shape[-1])
    return torch.cat(outs, dim=-2)  # (B, H, Tq, Dv)
