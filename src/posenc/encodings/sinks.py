"""Attention sinks around any encoding: one learned logit per head that joins the softmax's denominator.

gpt-oss (OpenAI's model card, arXiv 2508.10925) gives every attention head a learned scalar ``s_h`` that competes
with the keys for probability mass but brings no value::

    p_ij = exp(l_ij) / (exp(s_h) + sum_k exp(l_ik))          out_i = sum_j p_ij v_j

so a head may attend to (almost) nothing when no key is useful -- the role the first token plays as an *attention
sink* in models without one (Xiao et al. 2023, arXiv 2309.17453). ``s_h -> -inf`` is the plain softmax. Hugging Face
ships the same (``GptOssAttention.sinks``); Inkling 2's data-dependent sink logits are not this (they read the
hidden state).

:class:`AttentionSinks` wraps a registered encoding (``base``): it forwards every hook to it and replaces only the
normaliser of the base's attention terms, so rotary bases (``rope``), bias-only bases (``alibi``) and bases with
logit/value terms (``shaw``) keep their logits, values and bias. A base that replaces the normaliser itself
(``stick_breaking``) is refused: there is no softmax denominator to add a sink to.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from posenc._checks import check_number
from posenc.base import PositionalEncoding, get_encoding, register
from posenc.terms import AttentionCall, AttentionTerms, LayerView, ScoreBlock

__all__ = ["AttentionSinks", "SinkTerms", "sink_softmax"]


def sink_softmax(logits: Tensor, sink_logits: Tensor) -> Tensor:
    """Softmax over each row of ``logits`` with one extra logit per head in the denominator: ``(B, H, rows, keys)``.

    ``p_ij = exp(l_ij) / (exp(s_h) + sum_k exp(l_ik))``, the sink's own share dropped. A row whose every key is
    masked (``-inf``) gives all zeros -- the sink takes the whole mass -- never NaN, and its gradients are zero too.

    Args:
        logits: ``(B, H, rows, keys)`` masked logits (``-inf``, or a large negative additive mask, where a key may
            not be seen), in float32 or float64.
        sink_logits: ``(H,)`` the sink logit of each (query) head.
    """
    if logits.shape[-1] == 0:  # no keys: nothing to weigh (amax has no identity)
        return logits.clone()
    sink = sink_logits.to(logits.dtype)[None, :, None, None]  # (1, H, 1, 1)
    # the row's largest logit, the sink included, keeps every exp <= 1; finite because the sink is, and detached
    # because the result does not depend on it (its gradient would cancel exactly)
    top = torch.maximum(logits.amax(-1, keepdim=True), sink).detach()  # (B, H, rows, 1)
    weights = torch.exp(logits - top)  # masked keys: exp(-inf) = 0
    return weights / (weights.sum(-1, keepdim=True) + torch.exp(sink - top))


class _SinkNormalizer:
    """The sink softmax as a normaliser, mixed into a base's terms class (see :func:`_with_sinks`)."""

    sink_logits: Tensor  # (H,), the wrapper's parameter

    def normalize(self, logits: Tensor, blk: ScoreBlock) -> Tensor:
        return sink_softmax(logits, self.sink_logits)


class SinkTerms(_SinkNormalizer, AttentionTerms):
    """The sink softmax for a base without attention terms of its own (rotary or bias-only bases, ``nope``)."""

    call_tensors = ()  # the normaliser reads the logits and the sink parameter only
    # measured (benchmarks/terms_memory.py, T=2048, causal, over rope: peak extra memory of chunked / one block's
    # float32 scores = 10.6)
    pair_tensors = 11

    def __init__(self, sink_logits: Tensor) -> None:
        self.sink_logits = sink_logits


_WITH_SINKS: dict[type, type] = {}


def _with_sinks(cls: type[AttentionTerms]) -> type[AttentionTerms]:
    """``cls`` with the sink softmax as its normaliser (made once per class).

    A subclass rather than a wrapper object: the base's terms keep their own attributes, so the per-call tensors
    they declare in ``call_tensors`` are read and swapped by ``chunked``'s backward pass exactly as without sinks.
    """
    made = _WITH_SINKS.get(cls)
    if made is None:
        # the sink softmax keeps about two more score-sized tensors than the plain one (shifted logits, exps)
        made = type(f"{cls.__name__}WithSinks", (_SinkNormalizer, cls),
                    {"__module__": __name__, "pair_tensors": cls.pair_tensors + 2})
        _WITH_SINKS[cls] = made
    return made


@register("sinks")
class AttentionSinks(PositionalEncoding):
    """Attention sinks (gpt-oss, arXiv 2508.10925): a learned per-head logit joins the softmax denominator of any base.

    ``p_ij = exp(l_ij) / (exp(s_h) + sum_k exp(l_ik))`` where ``l_ij`` are the base's logits (its scores, logit
    terms and bias, masked) and ``s_h`` the sink logit of head ``h``; the sink adds no value, so a row's weights sum
    to ``1 - sigmoid(s_h - logsumexp_k l_ik) < 1``. Every other hook -- embed, rotate, bias, score_mod, features,
    terms' logits and values, commit, positions, binding -- is the base's.

    Args:
        base: the registered encoding to wrap (``"rope"`` by default, as gpt-oss uses); not ``"sinks"``, and not an
            encoding that replaces the softmax (``"stick_breaking"``: refused at its first call).
        base_options: options of the wrapped encoding (e.g. ``{"base": 150000.0}`` for ``rope``'s theta).
        sink_init: the value every sink logit starts at (``0.0``: the sink weighs as much as a key with logit 0;
            gpt-oss draws them from ``N(0, 0.02)``).
        per_layer: one instance, with its own sinks (and its own copy of the base), per attention layer (``True``, as
            gpt-oss has a sink vector per layer), or one shared by the stack (``False``; needed for a base that adds
            to the token embeddings, such as ``sinusoidal``, which a stack does once).

    Limits: the sinks need explicit attention, so ``sdpa``'s fused kernels and ``flex`` do not run it (``dense``,
    ``chunked`` and ``reference`` do, ``chunked`` in ``O(rows * Tk)`` memory forward and backward); the normaliser
    runs in the compute dtype (float32 for half-precision input, float64 for float64). A fully masked row (padding)
    gives zeros, not NaN.

    KV cache: nothing beyond the base's own; decoding equals the full forward.

    Shapes: ``q`` ``(B, H, Tq, D)``, ``k``/``v`` ``(B, Hkv, Tk, D)``; ``sink_logits`` ``(H,)``, one per query head.
    """

    family = "wrapper"
    paper = "2508.10925"

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: str = "rope", base_options: dict | None = None, sink_init: float = 0.0,
                 per_layer: bool = True) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if not isinstance(base, str):
            raise TypeError(f"sinks: base must be the name of a registered encoding (str); got "
                            f"{type(base).__name__} {base!r}.")
        if base.lower() == "sinks":
            raise ValueError("sinks: base must be another encoding, not 'sinks' itself (one sink per head is the "
                             "method; a second would only add to the first).")
        if base_options is not None and not isinstance(base_options, Mapping):
            raise TypeError(f"sinks: base_options must be a dict of the base's options; got "
                            f"{type(base_options).__name__}.")
        check_number(sink_init, "sinks: sink_init (the starting sink logit)")
        if not isinstance(per_layer, bool):
            raise TypeError(f"sinks: per_layer must be True or False; got {type(per_layer).__name__} {per_layer!r}.")
        self.inner = get_encoding(base, dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal,
                                  **dict(base_options or {}))
        if per_layer and self.inner.uses_embed:
            raise ValueError(f"sinks: base {base!r} adds to the token embeddings, which a model does once per stack, "
                             f"but per_layer=True builds one instance per attention layer; pass per_layer=False "
                             f"(one set of sinks shared by the stack).")
        if not per_layer and self.inner.per_layer:
            raise ValueError(f"sinks: base {base!r} needs an instance per attention layer (its own weights there), "
                             f"so the sinks around it are per layer too; pass per_layer=True.")
        self.sink_logits = nn.Parameter(torch.full((n_heads,), float(sink_init)))  # (H,)
        self.per_layer = per_layer
        self.extrapolates = self.inner.extrapolates
        self.reads = self.inner.reads
        self.reads_layer = self.inner.reads_layer

    # -- positions and binding: the base's ----------------------------------------------------------------------------
    def make_positions(self, batch: int, length: int, *, offset: int | Tensor = 0,
                       device: torch.device | str | None = None) -> Tensor:
        return self.inner.make_positions(batch, length, offset=offset, device=device)

    def bind(self, positions):
        """The wrapped encoding bound to ``positions`` (its per-forward tables), behind the sinks."""
        inner = self.inner.bind(positions)
        return self if inner is self.inner else self.bound_view(positions, inner=inner)

    def check_length(self, pos: Tensor) -> None:
        self.inner.check_length(pos)

    # -- hooks: the base's, but for the normaliser ---------------------------------------------------------------------
    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        return self.inner.embed(x, pos)

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        return self.inner.rotate(q, k, q_pos, k_pos)

    def rotated_width(self, head_dim: int) -> int:
        return self.inner.rotated_width(head_dim)

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        return self.inner.bias(q_pos, k_pos)

    def score_mod(self, q_pos: Tensor, k_pos: Tensor) -> Callable | None:
        return self.inner.score_mod(q_pos, k_pos)

    def features(self, x: Tensor, pos: Tensor, *, layer: LayerView) -> dict[str, Tensor]:
        return self.inner.features(x, pos, layer=layer)

    def terms(self, call: AttentionCall) -> AttentionTerms:
        """The base's terms (its logits, values, per-call tensors) with the sink softmax as their normaliser."""
        inner = self.inner.terms(call) if self.inner.uses_terms else None
        if inner is None:
            return SinkTerms(self.sink_logits)
        if type(inner).normalize is not AttentionTerms.normalize:
            raise ValueError(f"sinks: base {self.inner.name!r} replaces the softmax with a normaliser of its own "
                             f"({type(inner).__name__}.normalize), which has no denominator for a sink logit; wrap "
                             f"a base that keeps the softmax (rope, alibi, shaw, ...).")
        terms = copy.copy(inner)  # the base's object stays as it was
        terms.__class__ = _with_sinks(type(inner))
        terms.sink_logits = self.sink_logits
        return terms

    def commit(self, k: Tensor, v: Tensor, features: Mapping[str, Tensor], *,
               new: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        return self.inner.commit(k, v, features, new=new)

    @property
    def uses_embed(self) -> bool:
        return self.inner.uses_embed

    @property
    def uses_rotate(self) -> bool:
        return self.inner.uses_rotate

    @property
    def uses_bias(self) -> bool:
        return self.inner.uses_bias

    @property
    def uses_terms(self) -> bool:
        return True  # the sink softmax is a term of every call

    @property
    def uses_features(self) -> bool:
        return self.inner.uses_features

    @property
    def uses_commit(self) -> bool:
        return self.inner.uses_commit

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, per_layer={self.per_layer}"
