"""The numbers behind each picture of :mod:`posenc.viz`: the data functions, torch only (no matplotlib).

The *data functions* (``waves_data``, ``similarity_data``, ``decay_data``, ``bias_data``, ``bias_profile``,
``wavelengths_data``, ``axes_data``, ``attention_data``, ``grid_data``, and on a sentence ``gates_data``,
``logits_data``, ``disentangled_data``, ``normalizer_data``) call an encoding's own hooks and return tensors;
:mod:`posenc.viz.figures` draws them.

Which plots fit an encoding is decided from its hooks, never from its name (:func:`applicable_kinds`):

===============  ==================================================================  ===================================
kind             what it shows                                                       applies to
===============  ==================================================================  ===================================
``waves``        each channel over positions (the paper's sin/cos figure)            ``uses_embed`` or ``uses_rotate``
``similarity``   ``q_i . k_j`` (or cosine) of position vectors, ``(T, T)``           ``uses_embed`` or ``uses_rotate``
``decay``        Su et al.'s relative upper bound of ``q . k`` vs distance           RoPE and its subclasses/scalings
``bias``         ``pe.bias`` per head, ``(H, T, T)``, and its profile vs distance    ``uses_bias``
``wavelengths``  ``2 pi / theta_i`` per rotary pair, plain and as built (scaled)     RoPE and its subclasses/scalings
``axes``         which coordinate axis each rotary pair reads, against its wavelength  a ``pair_axes`` table (M-RoPE's)
``attention``    attention probabilities of a trained :class:`posenc.Transformer`    a model, not an encoding
``grid``         position vectors over a 2-D grid of positions, as images            ``uses_embed`` or ``uses_rotate``
``generators``   a learned rotation's generators ``L_k`` (``R(r) = exp(sum r_k L_k)``)  ``generator_matrices()``
``gates``        per-token log forget gates on a sentence, the decay they add, ALiBi  features ``log_f`` + logit terms
``logits``       what the terms add to ``q . k * scale`` on a sentence, per head       terms that add or form logits
``disentangled`` DeBERTa's content, c2p and p2c parts of those logits                  logit terms + ``reads_layer``
``normalizer``   the encoding's weights vs softmax, and the mass left unspent          terms that replace the softmax
===============  ==================================================================  ===================================

The last four are *probe* kinds: drawn from one self-attention call on a sentence (:class:`AttentionProbe`), because
what these encodings do depends on the layer's input. The sentence's UTF-8 bytes are the tokens. A bare encoding is
probed in a fixed layer (no training, seed :data:`PROBE_SEED`, float64): each byte value has a fixed random
embedding vector, RMS-normalised like a pre-norm layer's input, and ``W_q``, ``W_k``, ``W_v`` are random
``N(0, 1/dim)`` matrices, so ``q . k * scale`` has unit variance and a repeated word gets the same gates. A
:class:`posenc.Transformer` (or checkpoint) is probed in one of its own layers: the call its layer makes. Which probe
kinds fit is read from the hooks of that call: the class of the terms ``terms(call)`` returns (which of
:class:`~posenc.terms.AttentionTerms`' methods it overrides), the features ``features()`` returns, ``reads_layer``.

Position vectors: for an ``embed`` encoding, position ``p`` contributes ``embed(0, p)`` (the vector added to a
token at ``p``); for a ``rotate`` encoding, it is an all-ones query (key) rotated to ``p``. A wrapper such as
``randomized`` is drawn through the encoding it wraps.

``grid`` and 2-D encodings: a structured encoding (``n_axes >= 2`` coordinate axes, such as ``sinusoidal_2d``,
``axial_rope`` or ``mrope``) or any encoding of family ``"2d"`` receives coordinates ``(1, height * width, A)``
whose last two axes are ``(row, column)`` and the others 0 (e.g. ``mrope``'s time); an encoding that defines
``grid_positions(height, width)`` gets what that returns. Any other embed/rotate encoding is drawn with 1-D
positions ``0 .. height * width - 1`` laid out row by row, so a new 2-D encoding shows up as soon as it exists.

This module never imports matplotlib, so the data functions need only torch (``pip install posenc``, without the
``viz`` extra).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from posenc._checks import check_int
from posenc._viz_kinds import MAX_PLOT_LENGTH, PROBE_KINDS
from posenc.backends import prepare_call
from posenc.base import PositionalEncoding, get_encoding
from posenc.blocks import make_block, raw_scores
from posenc.encodings.fope import FoPE
from posenc.encodings.pope import PoPE
from posenc.encodings.rope import RoPE, rope_cos_sin, rope_frequencies
from posenc.terms import AttentionCall, AttentionTerms, LayerView, ScoreBlock, safe_softmax

if TYPE_CHECKING:
    from posenc.model import Transformer

__all__ = [
    "MAX_DENSE",
    "PROBE_SEED",
    "PROBE_TEXT",
    "AttentionProbe",
    "AxisAllocation",
    "DecayCurves",
    "FourierSpectrum",
    "PhaseOffsets",
    "Disentangled",
    "GateDecay",
    "LogitChange",
    "Normalized",
    "applicable_kinds",
    "attention_data",
    "axes_data",
    "attention_probe",
    "bias_data",
    "bias_profile",
    "by_distance",
    "decay_data",
    "disentangled_data",
    "fourier_data",
    "gates_data",
    "generators_data",
    "given_by_name",
    "grid_axes",
    "grid_data",
    "logits_data",
    "normalizer_data",
    "phases_data",
    "position_vectors",
    "resolve_encoding",
    "rope_of",
    "similarity_data",
    "token_labels",
    "wavelengths_data",
    "waves_data",
]

MAX_DENSE = 2048  # the largest T drawn as a dense T x T heatmap (a 2048^2 image is already ~4 Mpixel)

# -- inputs ------------------------------------------------------------------------------------------------------------
def resolve_encoding(encoding, *, dim: int = 256, n_heads: int = 4, max_seq_len: int = 2048,
                     causal: bool = False, **options) -> PositionalEncoding:
    """The encoding to draw.

    Args:
        encoding: a registry name (built with ``dim``, ``n_heads``, ``max_seq_len``, ``causal`` and ``options``, in
            eval mode), a :class:`PositionalEncoding` or :class:`posenc.Transformer` (drawn as they are, in their
            current train/eval mode), or the path of a checkpoint written by ``Transformer.save`` (its trained
            encoding, e.g. a learned table after training; loaded in eval mode). Registry names win over files.
    """
    from posenc.model import Transformer

    by_name = given_by_name(encoding)
    if options and not by_name:
        raise TypeError(f"encoding options {sorted(options)} only apply when the encoding is given by name; got "
                        f"{encoding!r}. Build the encoding (or model) with those options instead.")
    if isinstance(encoding, PositionalEncoding):
        return encoding
    if isinstance(encoding, Transformer):
        return encoding.pe
    if by_name:
        return get_encoding(encoding, dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal,
                            **options).eval()
    if isinstance(encoding, (str, os.PathLike)):
        return _load_model(Path(encoding)).pe  # the model is loaded in eval mode
    raise TypeError(f"expected an encoding name such as 'rope', a PositionalEncoding, a posenc.Transformer or a "
                    f"checkpoint path; got {type(encoding).__name__}.")


def given_by_name(encoding) -> bool:
    """Whether ``encoding`` is a registry name (registered names win over files of the same name)."""
    from posenc.base import registered_names

    return isinstance(encoding, str) and (encoding.lower() in registered_names() or not _is_checkpoint(encoding))


def _is_checkpoint(encoding: str | os.PathLike) -> bool:
    """A path (not a registry name): a PathLike, a name with a directory or a .pt/.pth suffix, or an existing file."""
    if isinstance(encoding, os.PathLike):
        return True
    path = Path(encoding)
    return path.suffix in (".pt", ".pth") or len(path.parts) > 1 or path.is_file()


def _load_model(path: Path) -> Transformer:
    from posenc.model import Transformer

    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist. Hint: write one with Transformer.save(path), or "
                         f"pass an encoding name such as 'rope' (posenc list shows them).")
    return Transformer.load(path).eval()


def _inner(pe: PositionalEncoding) -> PositionalEncoding:
    """The encoding a wrapper (family ``"wrapper"`` with an ``inner`` encoding) delegates to; others unchanged."""
    while pe.family == "wrapper" and isinstance(getattr(pe, "inner", None), PositionalEncoding):
        pe = pe.inner
    return pe


def rope_of(pe: PositionalEncoding) -> RoPE | None:
    """The RoPE that ``pe`` is or wraps (through wrappers such as ``randomized``), or ``None``."""
    inner = _inner(pe)
    return inner if isinstance(inner, RoPE) else None


def fope_of(pe: PositionalEncoding) -> FoPE | None:
    """The FoPE that ``pe`` is or wraps, or ``None``."""
    inner = _inner(pe)
    return inner if isinstance(inner, FoPE) else None


def pope_of(pe: PositionalEncoding) -> PoPE | None:
    """The PoPE that ``pe`` is or wraps, or ``None``."""
    inner = _inner(pe)
    return inner if isinstance(inner, PoPE) else None


def applicable_kinds(pe: PositionalEncoding) -> list[str]:
    """The plot kinds that can draw ``pe``, decided from its hooks (``attention`` needs a model: never listed).

    The probe kinds (``gates``, ``logits``, ``disentangled``, ``normalizer``) are read from one probe call of an
    encoding with attention terms (:func:`attention_probe` on a two-byte text): which methods of
    :class:`~posenc.terms.AttentionTerms` the terms it returns override, and which features it makes. An encoding
    whose hooks refuse that call (say one built for causal attention only, called bidirectionally because it was
    built with ``causal=False``) gets no probe kind here; asking for one raises the encoding's own error.
    """
    kinds = _static_kinds(pe)
    if pe.uses_terms:
        try:
            probe = attention_probe(pe, text="ab")
        except (ValueError, TypeError, KeyError):
            return kinds
        kinds += _probe_kinds(probe)
    return kinds


def _static_kinds(pe: PositionalEncoding) -> list[str]:
    """The kinds drawn from position-only hooks (no probe call)."""
    kinds = []
    vectors = pe.uses_embed or pe.uses_rotate
    if vectors:
        kinds += ["waves", "similarity"]
    if rope_of(pe) is not None:
        kinds += ["decay", "wavelengths"]
    if isinstance(getattr(_inner(pe), "pair_axes", None), tuple):
        kinds.append("axes")
    if pe.uses_bias:
        kinds.append("bias")
    if vectors:
        kinds.append("grid")
    if fope_of(pe) is not None:
        kinds.append("fourier")
    if pope_of(pe) is not None:
        kinds.append("phases")
    if callable(getattr(_inner(pe), "generator_matrices", None)):
        kinds.append("generators")
    return kinds


_WHY_NOT = {"waves": "it neither embeds nor rotates (no position vectors)",
            "similarity": "it neither embeds nor rotates (no position vectors)",
            "grid": "it neither embeds nor rotates (no position vectors)",
            "generators": "it has no generator_matrices() (not a rotation exp(sum r_k L_k) with learned generators)",
            "decay": "it is not a RoPE (no rotary frequencies)",
            "wavelengths": "it is not a RoPE (no rotary frequencies)",
            "axes": "it has no pair -> axis table (pair_axes: M-RoPE, VideoRoPE, HoPE)",
            "bias": "it adds no attention bias",
            "fourier": "it is not a FoPE (no Fourier coefficients)",
            "phases": "it is not a PoPE (no phase offsets)",
            "gates": "its features() make no per-token log forget gate 'log_f' (B, H, T, 1 or 2) for a logit term",
            "logits": "it has no attention terms that add to or form the logits (terms() returns none, or terms "
                      "that only replace the normaliser)",
            "disentangled": "its logit terms do not project positions through the layer's own W_q/W_k "
                            "(reads_layer is False)",
            "normalizer": "it keeps the softmax (its attention terms, if any, replace no normaliser)"}


def _check_kind(pe: PositionalEncoding, kind: str) -> None:
    if kind not in _static_kinds(pe):
        fits = ", ".join(applicable_kinds(pe)) or "none"
        raise ValueError(f"cannot draw {kind!r} for {pe.name or type(pe).__name__}: {_WHY_NOT[kind]}. Kinds that "
                         f"fit it: {fits}.")


def _check_length(length: int, *, name: str = "length", dense: bool = True) -> int:
    check_int(length, name, minimum=2, hint="It counts the positions to draw.")
    if not dense and length > MAX_PLOT_LENGTH:
        raise ValueError(f"{name}={length} is more positions than a plot can show (limit {MAX_PLOT_LENGTH}; the "
                         f"figure is ~1000 pixels wide). Hint: draw a window with offset=, e.g. --length 4096.")
    if dense and length > MAX_DENSE:
        raise ValueError(f"{name}={length} is too long for a dense {length} x {length} heatmap (limit {MAX_DENSE}). "
                         f"Hint: draw a shorter window, e.g. --length 512; the pattern repeats along the diagonals.")
    return length


def _positions(length: int, offset: int = 0) -> Tensor:
    check_int(offset, "offset", minimum=0, hint="It is the first position drawn.")
    return torch.arange(offset, offset + length)


# -- data --------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def position_vectors(pe: PositionalEncoding, pos: Tensor) -> tuple[Tensor, Tensor]:
    """What the encoding puts at each position, as float32 query-side and key-side vectors ``(T, C)`` each.

    ``embed`` encodings: ``embed(0, pos)`` for both (``C = dim``). ``rotate`` encodings: an all-ones query and key
    ``(1, 1, T, head_dim)`` passed through ``rotate`` (``C = head_dim``; they differ when the rotation also scales, as
    in xPos). ``pos`` is ``(T,)`` or, for 2-D encodings, ``(1, T, 2)``.
    """
    length = pos.shape[-2] if pos.dim() == 3 else pos.shape[-1]
    if pe.uses_embed:
        x = torch.zeros(1, length, pe.dim)  # (B, T, dim)
        vec = pe.embed(x, pos)[0].float()
        return vec, vec
    if pe.uses_rotate:
        ones = torch.ones(1, 1, length, pe.head_dim)  # (B, H, T, D)
        q, k = pe.rotate(ones, ones, pos, pos)
        return q[0, 0].float(), k[0, 0].float()
    raise ValueError(f"{pe.name or type(pe).__name__} neither embeds nor rotates: it has no position vectors to draw.")


@torch.no_grad()
def waves_data(pe: PositionalEncoding, *, length: int = 128, offset: int = 0) -> Tensor:
    """Each channel over positions, float32 ``(T, C)``.

    RoPE (and subclasses, scalings included): ``cos(p * theta_i)`` per rotary pair from the encoding's own cos/sin
    table (``C = rotary_dim // 2``, times its attention scale if it has one). Other encodings: the position vectors of
    :func:`position_vectors` (for sinusoidal, exactly the paper's ``PE(p, 2i) = sin(p / 10000^(2i/d))`` and
    ``PE(p, 2i + 1) = cos(...)``).
    """
    _check_kind(pe, "waves")
    pos = _positions(_check_length(length, dense=False), offset)
    rope = rope_of(pe)
    if rope is not None:
        cos, _ = rope.cos_sin(pos)
        return cos.float()
    return position_vectors(pe, pos)[0]


@torch.no_grad()
def similarity_data(pe: PositionalEncoding, *, length: int = 128, metric: str = "cosine", offset: int = 0) -> Tensor:
    """``S[i, j] = q_i . k_j`` between position vectors (or their cosine), float32 ``(T, T)``.

    For sinusoidal and RoPE this depends only on ``i - j`` (a Toeplitz matrix): ``sum_i cos((i - j) w_i)`` up to a
    constant.
    """
    _check_kind(pe, "similarity")
    if metric not in ("cosine", "dot"):
        raise ValueError(f"metric must be 'cosine' or 'dot'; got {metric!r}.")
    pos = _positions(_check_length(length), offset)
    q, k = position_vectors(pe, pos)
    if metric == "cosine":
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return q @ k.T  # (T, C) @ (C, T) -> (T, T)


class DecayCurves(NamedTuple):
    """Output of :func:`decay_data`; every field has shape ``(N,)``."""

    distance: Tensor  # int64 relative distances m - n, 0 .. max_distance
    bound: Tensor  # float64 (1 / F) sum_{j=1..F} |S_j|, Su et al.'s relative upper bound
    ones_score: Tensor  # float32 q_m . k_n / head_dim for all-ones q and k, rotated by the encoding itself


@torch.no_grad()
def decay_data(pe: PositionalEncoding, *, max_distance: int = 512) -> DecayCurves:
    """RoPE's long-term decay (Su et al. 2021, arXiv 2104.09864, section 3.4.3).

    With ``h_i = q_[2i:2i+1] k*_[2i:2i+1]`` (pairs as complex numbers) and ``S_j = sum_{i<j} e^{i (m-n) theta_i}``,
    Abel summation gives ``|q_m . k_n| <= (max_i |h_{i+1} - h_i|) sum_{j=1..F} |S_j|``; the paper plots
    ``(1/F) sum_j |S_j|`` against ``m - n``, which decays. ``theta_i`` come from ``pe.inv_freq()``, so a scaled RoPE
    (PI, NTK, YaRN, ...) draws its own curve. ``ones_score`` is the same picture from the encoding's ``rotate``.
    """
    _check_kind(pe, "decay")
    check_int(max_distance, "max_distance", minimum=1, hint="It counts tokens.")
    if max_distance > MAX_PLOT_LENGTH:
        raise ValueError(f"max_distance={max_distance} is more distances than a plot can show (limit "
                         f"{MAX_PLOT_LENGTH}). Hint: e.g. --length 4096.")
    rope = rope_of(pe)
    distance = torch.arange(max_distance + 1)
    theta = rope.inv_freq().to(torch.float64)  # (F,)
    phases = torch.polar(torch.ones((), dtype=torch.float64), distance.double()[:, None] * theta)  # (N, F)
    partial = torch.cumsum(phases, dim=-1)  # S_1 .. S_F: (N, F)
    bound = partial.abs().mean(dim=-1)
    ones = torch.ones(1, 1, distance.numel(), rope.head_dim)  # (B, H, N, D)
    q, k = rope.rotate(ones, ones, distance, torch.zeros_like(distance))  # queries at m = d, keys at n = 0
    score = (q * k).sum(-1)[0, 0].float() / rope.head_dim
    return DecayCurves(distance, bound, score)


class FourierSpectrum(NamedTuple):
    """Output of :func:`fourier_data`."""

    coefficients: Tensor  # float32 (M, M): mean |C^cos[h, m, d]| over the heads' slots, input frequency m x pair d
    waves: Tensor  # float32 (T, F): cos'_d(p) of the first head, every rotary pair (the clipped ones flat)
    rope: Tensor  # float32 (T, F): cos(p * theta_d), plain RoPE's wave of each pair, for comparison


@torch.no_grad()
def fourier_data(pe: PositionalEncoding, *, length: int = 128, offset: int = 0) -> FourierSpectrum:
    """FoPE's spectrum (Hua et al. 2025, arXiv 2412.17739): which kept frequencies feed each rotary pair, and the waves.

    ``coefficients[m, d]`` is the mean over heads of ``|C^cos[h, m, d]|`` (the identity plus the learned mixing);
    ``waves`` is the first head's ``cos'_d(p) = sum_m cos(p theta_m) C^cos[0, m, d]`` at ``p = offset ..
    offset + length - 1``, the clipped pairs included (1 at every position); ``rope`` is ``cos(p theta_d)``.
    """
    _check_kind(pe, "fourier")
    fope = fope_of(pe)
    pos = _positions(_check_length(length, dense=False), offset)
    base_cos, base_sin = rope_cos_sin(pos, fope.inv_freq())  # (T, F) float32
    slots = fope.cos_coef.shape[0]  # each slot its own table: head 0 is the first head's
    cos, _ = fope.fourier_cos_sin(base_cos[None], base_sin[None], slots)  # (1, S, T, F)
    return FourierSpectrum(fope.cos_coef.detach().abs().mean(0).float(), cos[0, 0].float(), base_cos.float())


class PhaseOffsets(NamedTuple):
    """Output of :func:`phases_data`."""

    offsets: Tensor  # float32 (H, d): delta, radians in [-2 pi, 0]
    distance: Tensor  # int64 (N,): query position - key position, 0 .. max_distance
    score: Tensor  # float32 (H, N): each head's q'.k' / d for unit magnitudes (softplus(x) = 1), through rotate
    no_offset: Tensor  # float64 (N,): the same with delta = 0, (1/d) sum_c cos(distance * theta_c)


@torch.no_grad()
def phases_data(pe: PositionalEncoding, *, max_distance: int = 128) -> PhaseOffsets:
    """PoPE's phase offsets (Gopalakrishnan et al. 2025, arXiv 2509.10534) and what they do to the score.

    With every magnitude ``softplus(x) = 1`` the score of a query ``n`` tokens after its key is
    ``(1/d) sum_c cos(n theta_c - delta_c)``: computed here through the encoding's own ``rotate`` (queries at
    ``n``, keys at 0), beside the same sum without offsets.
    """
    _check_kind(pe, "phases")
    pope = pope_of(pe)
    check_int(max_distance, "max_distance", minimum=1, hint="It counts tokens.")
    if max_distance > MAX_PLOT_LENGTH:
        raise ValueError(f"max_distance={max_distance} is more distances than a plot can show (limit "
                         f"{MAX_PLOT_LENGTH}).")
    distance = torch.arange(max_distance + 1)
    d = pope.head_dim
    unit = torch.full((1, pope.n_heads, distance.numel(), d), math.log(math.e - 1))  # softplus(log(e - 1)) = 1
    q, k = pope.rotate(unit, unit[:, :1], distance, torch.zeros_like(distance))
    score = (q * k).sum(-1)[0].float() / d  # (H, N)
    no_offset = torch.cos(distance.double()[:, None] * pope.inv_freq()).mean(-1)
    return PhaseOffsets(pope.offsets().detach().float(), distance, score, no_offset)


@torch.no_grad()
def bias_data(pe: PositionalEncoding, *, length: int = 64, offset: int = 0) -> Tensor:
    """``pe.bias(pos, pos)`` for ``pos = offset .. offset + T - 1``: float32 ``(H, T, T)``, ``-inf`` kept as is."""
    _check_kind(pe, "bias")
    pos = _positions(_check_length(length), offset)
    out = pe.bias(pos, pos)
    if out is None:
        raise ValueError(f"{pe.name}: bias() returned None for these positions; there is nothing to draw.")
    if out.dim() == 4:  # (1, H, T, T) -> (H, T, T)
        if out.shape[0] != 1:
            raise ValueError(f"{pe.name}: bias() depends on the batch ({tuple(out.shape)}); draw one sequence.")
        out = out[0]
    return out.float()


@torch.no_grad()
def bias_profile(pe: PositionalEncoding, *, length: int = 64) -> tuple[Tensor, Tensor]:
    """Bias against signed distance ``key - query`` for one query: ``(distance (T,), values (H, T))``.

    The query is the last position for a causal encoding (it sees every earlier key) and the middle one otherwise
    (both directions).
    """
    b = bias_data(pe, length=length)  # (H, T, T)
    query = length - 1 if pe.causal else length // 2
    return torch.arange(length) - query, b[:, query, :]


@torch.no_grad()
def wavelengths_data(pe: PositionalEncoding) -> tuple[Tensor, Tensor]:
    """Wavelengths ``2 pi / theta_i`` in tokens per rotary pair, ``(plain, as_built)``, float64 ``(F,)`` each.

    ``plain`` is unscaled RoPE with the encoding's base and rotary_dim; ``as_built`` uses its ``inv_freq()``, so they
    differ exactly where a context-extension scaling changed the frequencies.
    """
    _check_kind(pe, "wavelengths")
    rope = rope_of(pe)
    plain = 2 * math.pi / rope_frequencies(rope.rotary_dim, rope.base)
    return plain, 2 * math.pi / rope.inv_freq().to(torch.float64)


class AxisAllocation(NamedTuple):
    """The frequency allocation of a multi-axis rotary encoding (:func:`axes_data`)."""

    wavelengths: Tensor  # (F,) float64: 2 pi / theta_i of each rotary pair, in position units
    axes: Tensor  # (F,) int64: the coordinate axis pair i reads; -1 = not rotated
    names: tuple[str, ...]  # the axis names (time, height, width)


def axes_data(pe: PositionalEncoding) -> AxisAllocation:
    """Which axis each rotary pair reads, with its wavelength: the layout of ``pe.pair_axes`` (M-RoPE's sections,
    Qwen3-VL's round robin, VideoRoPE's time on the lowest frequencies, HoPE's unrotated temporal pairs).

    Wavelengths are those of the pair's frequency ``base^(-2i / head_dim)`` times the axis' ``axis_scale``.
    """
    _check_kind(pe, "axes")
    inner = _inner(pe)
    axes = torch.tensor(inner.pair_axes, dtype=torch.long)
    inv = rope_frequencies(inner.head_dim, inner.base)  # (F,) float64
    scale = torch.tensor(getattr(inner, "axis_scale", (1.0,) * len(inner.axis_names)), dtype=torch.float64)
    inv = inv * scale[axes.clamp(min=0)]
    return AxisAllocation(2 * math.pi / inv, axes, tuple(inner.axis_names))


def _text_tokens(text: str, vocab_size: int) -> Tensor:
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty string (its UTF-8 bytes are the tokens); got {text!r}.")
    ids = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    if int(ids.max()) >= vocab_size:
        raise ValueError(f"the model has vocab_size={vocab_size} but the text's UTF-8 bytes go up to {int(ids.max())}; "
                         f"byte-level input needs vocab_size >= 256 (or use plain ASCII text).")
    return ids[None]  # (1, T)


def token_labels(text: str) -> tuple[str, ...]:
    """One printable label per UTF-8 byte of ``text`` (the tokens of the byte-level pictures): ``␣`` for a space,
    the character for printable ASCII, ``·`` for any other byte."""
    return tuple("␣" if b == 32 else chr(b) if 32 < b < 127 else "·" for b in text.encode("utf-8"))


@contextlib.contextmanager
def _recording_calls(store: list[AttentionCall]) -> Iterator[None]:
    """Within the block, every self-attention call of :mod:`posenc.model` is also recorded, as the validated
    :class:`~posenc.terms.AttentionCall` (with its terms) that :func:`posenc.attention` prepares from its arguments.

    Cross-attention (called without an encoding) is not recorded. The model's own call runs unchanged.
    """
    import posenc.model as model_module

    original = model_module.attention

    def recording(q: Tensor, k: Tensor, v: Tensor, pe: PositionalEncoding | None = None, **kwargs) -> Tensor:
        if pe is not None:
            kwargs_call = {name: value for name, value in kwargs.items() if name != "backend"}
            store.append(prepare_call(q, k, v, pe, **kwargs_call))
        return original(q, k, v, pe, **kwargs)

    model_module.attention = recording
    try:
        yield
    finally:
        model_module.attention = original


def _model_calls(model: Transformer, text: str) -> list[AttentionCall]:
    """Every self-attention call of ``model`` on ``text`` (its bytes as tokens), in layer order, in eval mode."""
    from posenc.model import Transformer

    if not isinstance(model, Transformer):
        raise TypeError(f"expected a posenc.Transformer or a checkpoint path; got {type(model).__name__}.")
    if model.cfg.kind not in ("decoder", "encoder"):
        raise ValueError(f"attention is drawn for 'decoder' and 'encoder' models; this one is {model.cfg.kind!r}.")
    tokens = _text_tokens(text, model.cfg.vocab_size)
    _check_length(max(tokens.shape[1], 2), name="text length (bytes)")
    store: list[AttentionCall] = []
    was_training = model.training
    model.eval()
    try:
        with _recording_calls(store):
            model(tokens.to(model.tok_emb.weight.device))
    finally:
        model.train(was_training)
    return store


@torch.no_grad()
def attention_data(model, text: str) -> Tensor:
    """Attention weights of every layer and head of a decoder or encoder on ``text``: ``(L, H, T, T)``.

    Args:
        model: a :class:`posenc.Transformer` (``kind`` ``"decoder"`` or ``"encoder"``) or the path of a checkpoint
            written by ``Transformer.save``.
        text: the input; its UTF-8 bytes are the tokens (as in the lab's byte-level tasks).

    The weights are what each layer's call gives its values, from the encoding's normaliser (:func:`_weights`): rows
    sum to 1 over the keys each query may see (masked keys are 0), or to less where the normaliser leaves mass
    unspent (an attention sink's share, stick-breaking's remainder); a value term (stick-breaking's remainder,
    Shaw's ``a^V``) is not part of them.
    """
    from posenc.model import Transformer

    if isinstance(model, (str, os.PathLike)):
        model = _load_model(Path(model))
    if not isinstance(model, Transformer):
        raise TypeError(f"attention maps need a posenc.Transformer or a checkpoint path; got {type(model).__name__}.")
    return torch.stack([_weights(call)[0].float() for call in _model_calls(model, text)])  # (L, H, T, T)


@torch.no_grad()
def grid_data(pe: PositionalEncoding, *, height: int = 16, width: int = 16) -> tuple[Tensor, Tensor]:
    """Position vectors over a ``height x width`` grid: ``(channels (C, height, width), similarity (height, width))``.

    ``similarity`` is the cosine of every grid position's key vector with the query vector of the centre cell.
    Positions are coordinates ``(1, height * width, A)`` with ``(row, column)`` on the last two axes for 2-D /
    structured encodings (or the encoding's ``grid_positions(height, width)``), else ``0 .. height * width - 1`` row
    by row (see the module docstring).
    """
    _check_kind(pe, "grid")
    for name, value in (("height", height), ("width", width)):
        check_int(value, name, minimum=1, hint="It counts grid cells.")
    if height * width > MAX_DENSE:
        raise ValueError(f"a {height} x {width} grid has {height * width} cells, more than {MAX_DENSE}. "
                         f"Hint: use a smaller grid, e.g. --height 32 --width 32.")
    pos = _grid_positions(pe, height, width)
    q, k = position_vectors(pe, pos)  # (T, C) each
    centre = (height // 2) * width + width // 2
    qc = q[centre] / q[centre].norm().clamp_min(1e-12)
    sim = (k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)) @ qc  # (T,)
    return k.T.reshape(-1, height, width), sim.reshape(height, width)


def grid_axes(pe: PositionalEncoding) -> tuple[str, str] | None:
    """Names of the two coordinate axes a grid is drawn on, or ``None`` for a 1-D encoding."""
    inner = _inner(pe)
    if callable(getattr(pe, "grid_positions", None)):
        return ("row", "column")
    n_axes = getattr(inner, "n_axes", 1)
    if isinstance(n_axes, int) and n_axes >= 2:
        names = tuple(getattr(inner, "axis_names", ()) or ())
        return (names[-2], names[-1]) if len(names) == n_axes else ("row", "column")
    if inner.family == "2d":
        return ("row", "column")
    return None


def _grid_positions(pe: PositionalEncoding, height: int, width: int) -> Tensor:
    custom = getattr(pe, "grid_positions", None)
    if callable(custom):
        return custom(height, width)
    if grid_axes(pe) is None:
        return torch.arange(height * width)
    n_axes = getattr(_inner(pe), "n_axes", 2)
    n_axes = n_axes if isinstance(n_axes, int) and n_axes >= 2 else 2
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    coords = torch.zeros(1, height * width, n_axes, dtype=torch.long)  # (1, T, A); leading axes (e.g. time) at 0
    coords[0, :, -2], coords[0, :, -1] = rows.flatten(), cols.flatten()
    return coords


def generators_data(pe: PositionalEncoding, *, set_index: int = 0) -> tuple[Tensor, Tensor]:
    """A learned rotation's generators and how far they are from commuting.

    Returns:
        ``(generators (A, D, D), commutators (A, A))`` in float64: the skew-symmetric ``L_k`` of generator set
        ``set_index`` (``R(r) = exp(sum_k r_k L_k)`` at the coordinates as given, ``pe.generator_matrices``), and
        ``max |L_j L_k - L_k L_j|`` for every pair of axes: all zero when the encoding is exactly relative.
    """
    _check_kind(pe, "generators")
    gens = _inner(pe).generator_matrices(set_index).detach().to("cpu", torch.float64)
    comm = torch.einsum("jab,kbc->jkac", gens, gens)
    comm = (comm - comm.transpose(0, 1)).abs().amax(dim=(-1, -2))
    return gens, comm


# -- attention probes: one self-attention call on a sentence -----------------------------------------------------------
PROBE_TEXT = "The quick brown fox jumps over the lazy dog."  # the default sentence of the probe kinds (44 bytes)
PROBE_SEED = 0  # seed of the fixed layer a bare encoding is probed in


@dataclasses.dataclass(frozen=True)
class AttentionProbe:
    """One self-attention call of an encoding on a sentence: what :func:`posenc.attention` receives there.

    ``call`` is the validated :class:`~posenc.terms.AttentionCall` (q, k, v after the encoding's ``rotate``, every
    key's ``features``, the ``layer`` view, the encoding's ``terms``), exactly as :func:`posenc.backends.prepare_call`
    makes it; the probe data functions evaluate it as the ``reference`` backend does (one block of every query row).
    Batch 1; ``T`` is the number of UTF-8 bytes of ``text``.
    """

    text: str  # the input; its UTF-8 bytes are the tokens
    labels: tuple[str, ...]  # (T,) one printable label per token (token_labels)
    call: AttentionCall  # q (1, H, T, D), k and v (1, Hkv, T, D), positions (T,) or (1, T)
    source: str  # where the call comes from: the fixed seeded layer, or a model's layer
    x: Tensor | None = None  # (1, T, dim) the layer's (normed) input of the fixed layer; None for a model's layer

    @property
    def pe(self) -> PositionalEncoding:
        return self.call.pe

    @property
    def visible(self) -> Tensor:
        """Bool ``(Tq, Tk)``: which keys each query may see (the call's causal mask and ``attn_mask``; an additive
        mask hides a key only with ``-inf``)."""
        blk = _block(self.call)
        shape = (1, 1, blk.rows, blk.keys)
        return torch.isfinite(blk.masked(torch.zeros(shape, dtype=blk.q.dtype, device=blk.q.device)))[0, 0]


def _device_of(pe: PositionalEncoding) -> torch.device:
    for t in (*pe.parameters(), *pe.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def attention_probe(encoding, *, text: str = PROBE_TEXT, layer: int = 0, seed: int = PROBE_SEED,
                    **options) -> AttentionProbe:
    """One self-attention call of ``encoding`` on ``text`` (its UTF-8 bytes are the tokens).

    Args:
        encoding: a registry name (built as :func:`resolve_encoding` builds it, with ``options``; ``causal`` among
            them), a :class:`PositionalEncoding`, or a :class:`posenc.Transformer` / checkpoint path.
        text: the sentence, 2 to ``MAX_DENSE`` bytes.
        layer: which self-attention layer of a model to probe (0 = the first); a bare encoding has one, 0.
        seed: the seed of the fixed layer a bare encoding is probed in.

    A bare encoding is probed in a fixed, untrained layer, in float64 on the encoding's device: a random embedding
    vector per byte value (``N(0, 1)``, drawn for all 256 byte values in one order, so a byte's vector never depends
    on the text), passed through the encoding's ``embed`` if it has one and RMS-normalised like a pre-norm layer's
    input ``x``; ``W_q``, ``W_k``, ``W_v`` random ``N(0, 1/dim)`` (``dim -> H * head_dim``, no grouped keys). Then, as
    :class:`posenc.model.Attention` does: ``features(x, pos, layer=...)``, ``rotate(q, k, pos, pos)``, and the call at
    positions ``0 .. T-1``, causal when the encoding was built for causal attention. The layer's
    :class:`~posenc.terms.LayerView` carries those ``W_q``/``W_k``, so DeBERTa projects its table with them.

    A model is run on ``text`` (eval mode) and its layer ``layer``'s own call is kept: its embedding, norm,
    projections, encoding instance (per-layer encodings have their own) and positions.
    """
    check_int(layer, "layer", minimum=0, hint="It counts the model's self-attention layers from 0.")
    model = _model_of(encoding)
    if model is not None:
        if options:
            raise TypeError(f"encoding options {sorted(options)} only apply when the encoding is given by name; got "
                            f"a model. Build the model with those options instead.")
        calls = _model_calls(model, text)
        if layer >= len(calls):
            raise ValueError(f"layer={layer} is out of range: the model has {len(calls)} self-attention layers, "
                             f"0 .. {len(calls) - 1}.")
        source = f"layer {layer} of the model"
        return AttentionProbe(text, token_labels(text), calls[layer], source)
    pe = resolve_encoding(encoding, **options)
    if layer != 0:
        raise ValueError(f"layer={layer}: a bare encoding is probed in one fixed layer (layer=0); pass a "
                         f"posenc.Transformer or checkpoint to probe one of its layers.")
    check_int(seed, "seed", minimum=0, hint="It seeds the fixed probe layer.")
    tokens = _text_tokens(text, 256)[0]  # (T,)
    length = _check_length(tokens.numel(), name="text length (bytes)")
    device = _device_of(pe)
    dim, heads, head_dim = pe.dim, pe.n_heads, pe.head_dim
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(256, dim, generator=gen, dtype=torch.float64)  # one vector per byte value
    # W_q, W_k, W_v (dim, H * D): N(0, 1/dim), so q and k of a unit-RMS x have unit-variance entries
    w_q, w_k, w_v = (torch.randn(dim, heads * head_dim, generator=gen, dtype=torch.float64).mul_(dim**-0.5).to(device)
                     for _ in range(3))
    pos = torch.arange(length, device=device)
    x = table[tokens].to(device)[None]  # (1, T, dim)
    if pe.uses_embed:
        x = pe.embed(x, pos)
    x = x * x.pow(2).mean(-1, keepdim=True).rsqrt()  # RMS-normalised: a pre-norm layer's input

    def project(weight: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda r: (r.to(weight) @ weight).unflatten(-1, (heads, head_dim))  # (..., dim) -> (..., H, D)

    view = LayerView(layer, heads, heads, head_dim, project(w_q), project(w_k))
    q, k, v = (project(w)(x).transpose(1, 2) for w in (w_q, w_k, w_v))  # (1, T, H, D) -> (1, H, T, D)
    pe.check_length(pos)
    features = pe.features(x, pos, layer=view) if pe.uses_features else {}
    if pe.uses_rotate:
        q, k = pe.rotate(q, k, pos, pos)
    call = prepare_call(q, k, v, pe, q_pos=pos, k_pos=pos, causal=pe.causal, features=features, layer=view)
    source = f"a fixed random layer (seed {seed}, float64)"
    return AttentionProbe(text, token_labels(text), call, source, x)


def _model_of(encoding) -> Transformer | None:
    """The model ``encoding`` names (a Transformer, or a checkpoint path that is not a registry name), or ``None``."""
    from posenc.model import Transformer

    if isinstance(encoding, Transformer):
        return encoding
    if isinstance(encoding, (str, os.PathLike)) and not given_by_name(encoding):
        return _load_model(Path(encoding))
    return None


def _as_probe(source, text: str) -> AttentionProbe:
    if isinstance(source, AttentionProbe):
        return source
    if isinstance(source, PositionalEncoding):
        return attention_probe(source, text=text)
    raise TypeError(f"expected a PositionalEncoding or an AttentionProbe (viz.attention_probe(...)); got "
                    f"{type(source).__name__}.")


def _probe_kinds(probe: AttentionProbe) -> list[str]:
    """The probe kinds that fit the encoding of ``probe``, from the terms and features of its call."""
    terms = probe.call.terms
    if terms is None:
        return []

    def overrides(method: str) -> bool:
        return getattr(type(terms), method) is not getattr(AttentionTerms, method)

    adds_logits = terms.replaces_scores or overrides("logits") or overrides("queries")
    fits = {"gates": adds_logits and _log_gates(probe) is not None,
            "logits": adds_logits,
            "disentangled": adds_logits and probe.pe.reads_layer,
            "normalizer": overrides("normalize")}
    return [kind for kind in PROBE_KINDS if fits[kind]]


def _check_probe_kind(probe: AttentionProbe, kind: str) -> None:
    fits = _probe_kinds(probe)
    if kind not in fits:
        pe = probe.pe
        every = ", ".join(_static_kinds(pe) + fits) or "none"
        raise ValueError(f"cannot draw {kind!r} for {pe.name or type(pe).__name__}: {_WHY_NOT[kind]}. Kinds that "
                         f"fit it: {every}.")


def _log_gates(probe: AttentionProbe) -> Tensor | None:
    """The call's per-token log forget gates ``features["log_f"]`` as ``(H, Tk, S)``, or ``None`` if it has none."""
    log_f = probe.call.features.get("log_f")
    heads, keys = probe.call.q.shape[1], probe.call.k.shape[2]
    if (not isinstance(log_f, Tensor) or log_f.dim() != 4 or log_f.shape[1] not in (1, heads)
            or log_f.shape[2] != keys or log_f.shape[3] not in (1, 2)):
        return None
    return log_f[0].expand(heads, -1, -1)


def _block(call: AttentionCall) -> ScoreBlock:
    """The call as one block of every query row against every key, as the ``reference`` backend evaluates it."""
    return make_block(call, 0, call.q.shape[-2], call.q, call.k, call.v)


def _logits(call: AttentionCall, blk: ScoreBlock) -> Tensor:
    """The block's logits before the mask: the terms' logits of the raw scores, plus the bias (``B, H, Tq, Tk``).

    The same steps, in the same order, as :func:`posenc.blocks.block_weights` before it masks and normalises.
    """
    scores = raw_scores(call, blk)
    logits = call.terms.logits(scores, blk) if call.terms is not None else scores
    if call.uses_bias:
        logits = logits + call.pe.bias(blk.q_pos, blk.k_pos).to(logits.dtype)
    return logits


def _weights(call: AttentionCall) -> Tensor:
    """The call's attention weights ``(B, H, Tq, Tk)``: its masked logits through the encoding's normaliser."""
    blk = _block(call)
    masked = blk.masked(_logits(call, blk))
    return call.terms.normalize(masked, blk) if call.terms is not None else safe_softmax(masked)


class LogitChange(NamedTuple):
    """Output of :func:`logits_data`: what an encoding does to the logits of one attention call."""

    labels: tuple[str, ...]  # (T,) the tokens
    added: Tensor  # (H, Tq, Tk) the encoding's logits minus the plain scores q . k * scale, every pair (masked too)
    visible: Tensor  # (Tq, Tk) bool, which keys each query may see


@torch.no_grad()
def logits_data(source, *, text: str = PROBE_TEXT) -> LogitChange:
    """What the encoding adds to the attention logits on a sentence: its logits minus ``q . k * scale``, per head.

    Args:
        source: a :class:`PositionalEncoding` (probed on ``text`` by :func:`attention_probe`) or an
            :class:`AttentionProbe`.
        text: the sentence, when ``source`` is an encoding.

    The logits are the terms' ``logits(raw scores)`` plus the bias, before the mask (what the ``reference`` backend
    masks and normalises); the plain scores are ``q . k * scale`` of the call's q and k (after ``rotate``). For FoX
    and data-dependent ALiBi that difference is the decay ``c_i - c_j``; for Inkling the relative bias (times
    ``tau_i``, plus ``(tau_i - 1) q . k * scale``, with log-scaling); for DeBERTa ``(c2p + p2c) / sqrt(3d)`` plus
    the content term's rescaling ``(1/sqrt(3) - 1) q . k * scale``; for terms that form the whole score (PaTH) how
    far it moved from ``q . k * scale``. Computed in the call's compute dtype (float64 for a bare encoding).
    """
    probe = _as_probe(source, text)
    _check_probe_kind(probe, "logits")
    call = probe.call
    blk = _block(call)
    plain = (blk.q @ blk.k.transpose(-2, -1)) * call.scale  # (B, H, Tq, Tk)
    return LogitChange(probe.labels, (_logits(call, blk) - plain)[0], probe.visible)


def by_distance(values: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise ``values`` ``(H, Tq, Tk)`` re-indexed by signed distance ``key - query`` (key indices, bottom-right
    aligned): ``(distance (N,), (H, Tq, N))``, NaN where a query has no visible key at that distance.

    ``distance`` runs over the distances some visible pair has (``-(Tk - 1) .. 0`` for causal attention); row ``i``
    of the result is query ``i``'s values against how far back (negative) or ahead each key is.
    """
    heads, tq, tk = values.shape
    q_index = torch.arange(tk - tq, tk, device=values.device)
    offset = torch.arange(tk, device=values.device) - q_index[:, None]  # (Tq, Tk) key - query
    seen = offset[visible]
    lo, hi = (int(seen.min()), int(seen.max())) if seen.numel() else (0, 0)
    out = torch.full((heads, tq, hi - lo + 1), float("nan"), dtype=values.dtype, device=values.device)
    rows, cols = visible.nonzero(as_tuple=True)
    out[:, rows, offset[rows, cols] - lo] = values[:, rows, cols]
    return torch.arange(lo, hi + 1, device=values.device), out


class GateDecay(NamedTuple):
    """Output of :func:`gates_data`: per-token forget gates on a sentence and the decay they add to the logits."""

    labels: tuple[str, ...]  # (T,) the tokens
    log_f: Tensor  # (H, T, S) the features' log gates per head and token (S = 2: channel 1 is the reversed set)
    decay: Tensor  # (H, T, T) the logit change of the call (logits_data): c_i - c_j, masked pairs included
    visible: Tensor  # (T, T) bool
    query: int  # the query of the profiles: the last one (causal) or the middle one (bidirectional)
    distance: Tensor  # (T,) int64 key - query
    profile: Tensor  # (H, T) decay[:, query, :]; NaN where the query may not see the key
    alibi: Tensor  # (H, T) plain ALiBi's bias (the registry's "alibi", same heads and direction) for that query


@torch.no_grad()
def gates_data(source, *, text: str = PROBE_TEXT) -> GateDecay:
    """Forget gates (FoX, data-dependent ALiBi) on a sentence: the input gates, their decay, and plain ALiBi.

    ``log_f`` is what the encoding's ``features()`` computed from each token (the call's ``features["log_f"]``),
    ``decay`` what its terms add to the logits (:func:`logits_data`): ``sum_{l=j+1..i} log f_l`` below the diagonal.
    ``alibi`` is the bias of the registered ``alibi`` encoding with the same heads and direction, for comparison: a
    constant gate ``log f = -m_h`` is ALiBi with slope ``m_h``.
    """
    probe = _as_probe(source, text)
    _check_probe_kind(probe, "gates")
    change = logits_data(probe)
    pe, call = probe.pe, probe.call
    tq, tk = change.visible.shape
    query = tq - 1 if call.causal else tq // 2
    alibi = get_encoding("alibi", dim=pe.dim, n_heads=pe.n_heads, max_seq_len=max(pe.max_seq_len, tk),
                         causal=call.causal).to(_device_of(pe))
    q_pos = call.q_pos[..., query:query + 1] if call.q_pos.dim() == 1 else call.q_pos[0, query:query + 1]
    k_pos = call.k_pos if call.k_pos.dim() == 1 else call.k_pos[0]
    alibi_row = alibi.bias(q_pos, k_pos).reshape(pe.n_heads, tk).to(change.added.dtype)  # (H, Tk)
    row_visible = change.visible[query]
    nan = torch.tensor(float("nan"), dtype=change.added.dtype, device=change.added.device)
    profile = torch.where(row_visible, change.added[:, query], nan)
    q_index = tk - tq + query
    return GateDecay(probe.labels, _log_gates(probe), change.added, change.visible, query,
                     torch.arange(tk, device=row_visible.device) - q_index, profile,
                     torch.where(row_visible, alibi_row, nan))


class Disentangled(NamedTuple):
    """Output of :func:`disentangled_data`: the logits of one call split into three parts that sum to them."""

    labels: tuple[str, ...]  # (T,) the tokens
    content: Tensor  # (H, Tq, Tk) what is left: the content term q . k as it enters the logits
    c2p: Tensor  # (H, Tq, Tk) the part read through the queries (the call with k = 0): content-to-position
    p2c: Tensor  # (H, Tq, Tk) the part read through the keys (the call with q = 0): position-to-content
    visible: Tensor  # (Tq, Tk) bool


@torch.no_grad()
def disentangled_data(source, *, text: str = PROBE_TEXT) -> Disentangled:
    """DeBERTa's disentangled attention on a sentence: content, c2p and p2c as they enter the logits.

    Each part is the encoding's own logits for the same call with one side zeroed: ``c2p`` the logits with ``k = 0``
    (then ``q . k`` and ``k . Q^r`` vanish: ``q_i . K^r_delta(i,j)`` is left), ``p2c`` with ``q = 0`` (``k_j .
    Q^r_delta'``), and ``content`` the logits minus both (``q . k``, DeBERTa's ``1/sqrt(3d)`` scale included).
    The split is exact for logits linear in the three terms, which is what an encoding that projects positions
    through the layer's ``W_q``/``W_k`` (``reads_layer``) has.
    """
    probe = _as_probe(source, text)
    _check_probe_kind(probe, "disentangled")
    call = probe.call

    def logits_with(q: Tensor, k: Tensor) -> Tensor:
        again = prepare_call(q, k, call.v, call.pe, q_pos=call.q_pos, k_pos=call.k_pos, causal=call.causal,
                             attn_mask=call.attn_mask, scale=call.scale, features=call.features, layer=call.layer)
        return _logits(again, _block(again))[0]  # (H, Tq, Tk)

    total = logits_with(call.q, call.k)
    c2p = logits_with(call.q, torch.zeros_like(call.k))
    p2c = logits_with(torch.zeros_like(call.q), call.k)
    return Disentangled(probe.labels, total - c2p - p2c, c2p, p2c, probe.visible)


class Normalized(NamedTuple):
    """Output of :func:`normalizer_data`: the encoding's normaliser beside the softmax, on the same logits."""

    labels: tuple[str, ...]  # (T,) the tokens
    softmax: Tensor  # (H, Tq, Tk) the masked softmax of the call's logits (what plain attention would weigh)
    weights: Tensor  # (H, Tq, Tk) the encoding's weights: its normaliser on the same masked logits
    unspent: Tensor  # (H, Tq) 1 - sum_j weights: the mass no key takes (a sink's share, stick-breaking's remainder)
    visible: Tensor  # (Tq, Tk) bool


@torch.no_grad()
def normalizer_data(source, *, text: str = PROBE_TEXT) -> Normalized:
    """An encoding that replaces the softmax (stick-breaking, attention sinks) on a sentence.

    ``weights`` are the terms' ``normalize`` of the call's masked logits (what multiplies ``v``), ``softmax`` the
    plain masked softmax of the same logits, ``unspent = 1 - sum_j weights``: the sink's share of each query's mass
    (sinks), or the remainder (stick-breaking), which a remainder term spends on a learned vector or the query's own
    value.
    """
    probe = _as_probe(source, text)
    _check_probe_kind(probe, "normalizer")
    call = probe.call
    blk = _block(call)
    masked = blk.masked(_logits(call, blk))
    weights = call.terms.normalize(masked, blk)[0]
    return Normalized(probe.labels, safe_softmax(masked)[0], weights, 1.0 - weights.sum(-1), probe.visible)
