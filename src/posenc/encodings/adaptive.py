"""Adaptive biases: ``adaptive`` (a learned per-head mixture of bias encodings) and ``dape`` (Zheng et al. 2024).

- ``adaptive``: ``bias[h] = sum_c softmax(w[h])_c * bias_c[h]`` over a bank of registered bias encodings
  (default ALiBi, T5 buckets and FIRE), so each head learns which notion of distance it wants. With
  ``content=True`` the mixture also depends on the query, ``softmax(w[h] + q_i U[h])``, which needs the query and so
  is an attention term (see below). A one-hot mixture is exactly its component.
- ``dape`` (arXiv 2405.14722): the attention logits and a static bias ``B`` (any bias encoding, KERPLE by default as in
  the paper's main results) are refined per query/key pair by a small MLP across heads,
  ``A = L + B + f([L; B])`` with ``L = q k^T * scale`` and ``f: R^{2H} -> R^H`` (``Linear -> LeakyReLU -> Linear``,
  as the paper's code); the mask is applied after ``f``, so masked pairs never matter.

Memory: the content-conditioned ``adaptive`` and ``dape`` are attention terms (:mod:`posenc.terms`) over each block
of query rows. On ``dense``/``reference`` they hold ``(B, H, Tq, Tk)`` float32 logits and biases, and ``dape`` also
``(B, Tq, Tk, hidden)`` MLP activations, i.e. ``O(B * Tq * Tk * (3H + hidden))`` floats (about 0.5 GB for B=1, H=8,
hidden=32, T=4096); ``chunked`` (what ``auto`` picks for long sequences) holds that only for one block of rows, in
the forward and the backward pass. The plain ``adaptive`` mixture is an ordinary bias with a FlexAttention
``score_mod`` when all components have one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc._checks import check_int
from posenc.base import PositionalEncoding, get_encoding, register
from posenc.terms import AttentionCall, AttentionTerms, ScoreBlock, check_head_dim

__all__ = ["AdaptiveBias", "DAPE"]


def _bias_component(spec: str | PositionalEncoding, *, owner: str, dim: int, n_heads: int, max_seq_len: int,
                    causal: bool, options: dict | None) -> PositionalEncoding:
    if isinstance(spec, PositionalEncoding):
        if options:
            raise ValueError(f"{owner}: options are for components given by name; {spec.name} is already built.")
        pe = spec
    elif isinstance(spec, str):
        if spec in ("adaptive", "dape"):
            raise ValueError(f"{owner}: a component must be a plain bias encoding, not {spec!r}.")
        pe = get_encoding(spec, dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, **(options or {}))
    else:
        raise TypeError(f"{owner}: components are registered names such as 'alibi' or built encodings; got "
                        f"{type(spec).__name__} {spec!r}.")
    name = pe.name or type(pe).__name__
    if not pe.uses_bias or pe.uses_rotate or pe.uses_embed or pe.uses_terms:
        raise ValueError(f"{owner}: component {name!r} must be a pure attention-bias encoding (bias only, no "
                         f"embed/rotate/terms). Hint: alibi, t5, fire, kerple, sandwich, dynamic, spd.")
    if pe.n_heads != n_heads:
        raise ValueError(f"{owner}: component {name!r} has n_heads={pe.n_heads}, expected {n_heads}.")
    return pe


def _batched(bias: Tensor, batch: int) -> Tensor:
    """``(H, Tq, Tk)`` or ``(B|1, H, Tq, Tk)`` -> ``(batch, H, Tq, Tk)``."""
    bias = bias.unsqueeze(0) if bias.dim() == 3 else bias
    return bias.expand(batch, *bias.shape[1:])


@register("adaptive")
class AdaptiveBias(PositionalEncoding):
    """Learned per-head softmax mixture of bias encodings (ALiBi, T5, FIRE, ...), optionally content-conditioned.

    ``bias[h] = sum_c softmax(mix_logits[h])_c * bias_c[h]``. ``mix_logits`` starts at zero (a uniform mixture).
    Setting a head's logits to ``0`` for one component and ``-inf`` for the rest makes it exactly that component.

    Args:
        components: registered names of bias encodings (or built encodings with the same ``n_heads``).
        component_options: per-name options, e.g. ``{"t5": {"num_buckets": 64}}``.
        content: condition the mixture on the query: ``softmax(mix_logits[h] + q_i @ content_proj[h])`` (an
            attention term, no longer a bias; ``content_proj`` starts at zero).
    """

    family = "adaptive"
    paper = None  # a mixture of published biases; the components carry the papers

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 components: Sequence[str | PositionalEncoding] = ("alibi", "t5", "fire"),
                 component_options: dict[str, dict] | None = None, content: bool = False) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if isinstance(components, (str, PositionalEncoding)) or len(components) == 0:
            raise ValueError(f"adaptive: components must be a non-empty sequence such as ('alibi', 't5', 'fire'); "
                             f"got {components!r}.")
        options = dict(component_options or {})
        names = [c if isinstance(c, str) else c.name for c in components]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(f"adaptive: component_options for {unknown}, which are not in components {names}.")
        self.components = nn.ModuleList(
            _bias_component(c, owner="adaptive", dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal,
                            options=options.get(c) if isinstance(c, str) else None) for c in components)
        self.component_names = tuple(names)
        self.extrapolates = all(c.extrapolates for c in self.components)
        self.flex_backward = all(c.flex_backward for c in self.components)
        self.mix_logits = nn.Parameter(torch.zeros(n_heads, len(self.components)))  # (H, C)
        self.content = bool(content)
        if self.content:
            self.content_proj = nn.Parameter(torch.zeros(n_heads, self.head_dim, len(self.components)))  # (H, D, C)

    def mixture_weights(self) -> Tensor:
        """``softmax(mix_logits)`` ``(H, C)`` in float32 (float64 for a float64 encoding)."""
        logits = self.mix_logits
        return torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)

    def check_length(self, pos: Tensor) -> None:
        for c in self.components:
            c.check_length(pos)

    def component_biases(self, q_pos: Tensor, k_pos: Tensor) -> list[Tensor]:
        """Each component's bias, ``(H, Tq, Tk)`` or ``(B, H, Tq, Tk)``."""
        return [c.bias(q_pos, k_pos) for c in self.components]

    @property
    def uses_bias(self) -> bool:  # the content-conditioned mixture is a term (it reads the queries), not a bias
        return not self.content

    @property
    def uses_terms(self) -> bool:
        return self.content

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """The static mixture, float32 ``(H, Tq, Tk)`` (``(B, H, Tq, Tk)`` for per-sequence positions)."""
        w = self.mixture_weights()  # (H, C)
        out = None
        for c, b in enumerate(self.component_biases(q_pos, k_pos)):
            term = w[:, c, None, None].to(b.dtype) * b
            out = term if out is None else out + term
        return out.to(torch.promote_types(out.dtype, w.dtype))

    def score_mod(self, q_pos: Tensor, k_pos: Tensor) -> Callable:
        """FlexAttention ``score_mod`` adding the static mixture: the same numbers as :meth:`bias`.

        Each component contributes through its own ``score_mod``; a component without one is materialized as its
        dense ``(H, Tq, Tk)`` bias and read by index inside the closure (same numbers, ``O(Tq * Tk)`` memory).
        """
        if self.content:
            raise ValueError("adaptive: the content-conditioned mixture depends on the queries, so it is an "
                             "attention term and has no score_mod. Use backend='auto' (or 'chunked').")
        mods = []
        for comp in self.components:
            mod = comp.score_mod(q_pos, k_pos)
            if mod is None:
                dense = _batched(comp.bias(q_pos, k_pos), 1) if q_pos.dim() == k_pos.dim() == 1 else \
                    comp.bias(q_pos, k_pos)  # (1|B, H, Tq, Tk)

                def mod(score, b, h, q_idx, kv_idx, dense=dense):
                    return score + dense[b if dense.shape[0] > 1 else torch.zeros_like(b), h, q_idx, kv_idx]
            mods.append(mod)
        # one tensor per component: FlexAttention's backward cannot index one grad-requiring tensor twice
        w = self.mixture_weights()
        weights = [w[:, c].clone() for c in range(w.shape[1])]  # C x (H,)

        def adaptive_score_mod(score, b, h, q_idx, kv_idx):
            zero = torch.zeros_like(score)
            out = score
            for weight, mod in zip(weights, mods):
                out = out + weight[h].to(score.dtype) * mod(zero, b, h, q_idx, kv_idx)
            return out

        return adaptive_score_mod

    def terms(self, call: AttentionCall) -> AdaptiveContentTerms | None:
        """With ``content=True``: the query-conditioned mixture ``sum_c softmax(mix_logits[h] + q_i U[h])_c bias_c``
        as a logit term; ``None`` for the static mixture (an ordinary bias)."""
        if not self.content:
            return None
        check_head_dim(self, call.q, call.k)
        return AdaptiveContentTerms(self)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, components={list(self.component_names)}, content={self.content}"


@register("dape")
class DAPE(PositionalEncoding):
    """DAPE: a static bias refined by an MLP over (attention logits, bias) per query/key pair (arXiv 2405.14722).

    ``scores = L + B + f([L; B])``, ``L = q k^T * scale`` ``(B, H, Tq, Tk)``, ``B`` the static bias of ``base``, and
    ``f`` a per-pair MLP across heads ``2H -> hidden -> H``. Its last layer starts at zero, so a fresh DAPE equals its
    base encoding exactly and learns the refinement. Its attention terms run on every backend but flex, on ``chunked``
    one block of query rows at a time (memory in the module docstring).

    Args:
        base: registered bias encoding giving ``B`` (KERPLE in the paper's main results; ALiBi and FIRE also used).
        base_options: options of the base encoding.
        hidden: MLP width (32 in the paper).
    """

    family = "adaptive"
    paper = "2405.14722"

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: str = "kerple", base_options: dict | None = None, hidden: int = 32) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        check_int(hidden, "dape: hidden", minimum=1)
        self.base = _bias_component(base, owner="dape", dim=dim, n_heads=n_heads, max_seq_len=max_seq_len,
                                    causal=causal, options=base_options)
        self.extrapolates = self.base.extrapolates
        self.hidden = hidden
        self.mlp = nn.Sequential(nn.Linear(2 * n_heads, hidden), nn.LeakyReLU(), nn.Linear(hidden, n_heads))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def check_length(self, pos: Tensor) -> None:
        self.base.check_length(pos)

    def refine(self, logits: Tensor, bias: Tensor) -> Tensor:
        """``f([L; B])``: ``(B, H, Tq, Tk)`` from logits and bias of that shape, computed in ``logits``' dtype."""
        x = torch.cat((logits, bias), dim=1).permute(0, 2, 3, 1)  # (B, Tq, Tk, 2H)
        lin1, act, lin2 = self.mlp
        x = act(F.linear(x, lin1.weight.to(x.dtype), lin1.bias.to(x.dtype)))  # (B, Tq, Tk, hidden)
        x = F.linear(x, lin2.weight.to(x.dtype), lin2.bias.to(x.dtype))  # (B, Tq, Tk, H)
        return x.permute(0, 3, 1, 2)  # (B, H, Tq, Tk)

    def terms(self, call: AttentionCall) -> DAPETerms:
        """The logit term ``B + f([L; B])`` added to ``L = q k^T * scale``; the mask comes after ``f``.

        Args:
            q: ``(B, H, Tq, D)``; k, v: ``(B, Hkv, Tk, D)``; positions ``(T,)`` or ``(B, T)`` for the base bias.
        """
        return DAPETerms(self)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.base.name!r}, hidden={self.hidden}"


class AdaptiveContentTerms(AttentionTerms):
    """The content-conditioned mixture of :class:`AdaptiveBias` for one call, a logit term per block."""

    # measured at T=4096 with the default components (benchmarks/terms_memory.py): each component's bias and its
    # share of the mixture, FIRE's per-pair MLP activations, the gradients
    pair_tensors = 22
    call_tensors = ()  # the block methods read the block and the encoding's parameters (and its components') only

    def __init__(self, pe: AdaptiveBias) -> None:
        self.pe = pe

    def logits(self, scores: Tensor, blk: ScoreBlock) -> Tensor:
        pe, ct = self.pe, scores.dtype
        gate = torch.einsum("bhqd,hdc->bhqc", blk.q, pe.content_proj.to(ct))  # (B, H, rows, C)
        w = torch.softmax(pe.mix_logits.to(ct)[None, :, None, :] + gate, dim=-1)  # (B, H, rows, C)
        for c, b in enumerate(pe.component_biases(blk.q_pos, blk.k_pos)):
            scores = scores + w[..., c, None] * _batched(b.to(ct), scores.shape[0])
        return scores  # (B, H, rows, keys)


class DAPETerms(AttentionTerms):
    """DAPE's refined bias for one call: ``scores + B + f([scores; B])`` per block."""

    call_tensors = ()  # the block methods read the block and the encoding's parameters only: B is made per block

    def __init__(self, pe: DAPE) -> None:
        self.pe = pe
        # estimated: (B, rows, keys, hidden) MLP activations (input, pre- and post-activation) next to the
        # (B, H, rows, keys) scores, bias and refinement: size blocks for them too
        self.pair_tensors = 6 + 3 * -(-pe.hidden // pe.n_heads)

    def logits(self, scores: Tensor, blk: ScoreBlock) -> Tensor:
        bias = _batched(self.pe.base.bias(blk.q_pos, blk.k_pos).to(scores.dtype), scores.shape[0])  # (B, H, rows, keys)
        return scores + bias + self.pe.refine(scores, bias)
