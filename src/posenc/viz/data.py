"""The numbers behind each picture of :mod:`posenc.viz`: the data functions, torch only (no matplotlib).

The *data functions* (``waves_data``, ``similarity_data``, ``decay_data``, ``bias_data``, ``bias_profile``,
``wavelengths_data``, ``attention_data``, ``grid_data``) call an encoding's own hooks and return tensors;
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
``attention``    attention probabilities of a trained :class:`posenc.Transformer`    a model, not an encoding
``grid``         position vectors over a 2-D grid of positions, as images            ``uses_embed`` or ``uses_rotate``
===============  ==================================================================  ===================================

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
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from posenc._checks import check_int
from posenc._viz_kinds import MAX_PLOT_LENGTH
from posenc.base import PositionalEncoding, get_encoding
from posenc.encodings.rope import RoPE, rope_frequencies

if TYPE_CHECKING:
    from posenc.model import Transformer

__all__ = [
    "MAX_DENSE",
    "DecayCurves",
    "applicable_kinds",
    "attention_data",
    "bias_data",
    "bias_profile",
    "decay_data",
    "given_by_name",
    "grid_axes",
    "grid_data",
    "position_vectors",
    "resolve_encoding",
    "rope_of",
    "similarity_data",
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


def applicable_kinds(pe: PositionalEncoding) -> list[str]:
    """The plot kinds that can draw ``pe``, decided from its hooks (``attention`` needs a model: never listed)."""
    kinds = []
    vectors = pe.uses_embed or pe.uses_rotate
    if vectors:
        kinds += ["waves", "similarity"]
    if rope_of(pe) is not None:
        kinds += ["decay", "wavelengths"]
    if pe.uses_bias:
        kinds.append("bias")
    if vectors:
        kinds.append("grid")
    return kinds


def _check_kind(pe: PositionalEncoding, kind: str) -> None:
    if kind not in applicable_kinds(pe):
        why = {"waves": "it neither embeds nor rotates (no position vectors)",
               "similarity": "it neither embeds nor rotates (no position vectors)",
               "grid": "it neither embeds nor rotates (no position vectors)",
               "decay": "it is not a RoPE (no rotary frequencies)",
               "wavelengths": "it is not a RoPE (no rotary frequencies)",
               "bias": "it adds no attention bias"}[kind]
        fits = ", ".join(applicable_kinds(pe)) or "none"
        raise ValueError(f"cannot draw {kind!r} for {pe.name or type(pe).__name__}: {why}. Kinds that fit it: "
                         f"{fits}.")


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


def _text_tokens(text: str, vocab_size: int) -> Tensor:
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty string (its UTF-8 bytes are the tokens); got {text!r}.")
    ids = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    if int(ids.max()) >= vocab_size:
        raise ValueError(f"the model has vocab_size={vocab_size} but the text's UTF-8 bytes go up to {int(ids.max())}; "
                         f"byte-level input needs vocab_size >= 256 (or use plain ASCII text).")
    return ids[None]  # (1, T)


@contextlib.contextmanager
def _recording_attention(store: list[Tensor]) -> Iterator[None]:
    """Within the block, every self-attention call of :mod:`posenc.model` also records its probabilities.

    The probabilities are what the call computes with one-hot values (``v = I``): ``softmax(...) @ I`` is the
    softmax itself, through the reference backend with the same mask, bias or attention terms. Cross-attention
    (called without an encoding) is not recorded.
    """
    import posenc.model as model_module

    original = model_module.attention

    def recording(q: Tensor, k: Tensor, v: Tensor, pe: PositionalEncoding | None = None, **kwargs) -> Tensor:
        out = original(q, k, v, pe, **kwargs)
        if pe is not None:
            b, hkv, tk, _ = k.shape
            eye = torch.eye(tk, dtype=v.dtype, device=v.device).expand(b, hkv, tk, tk)  # (B, Hkv, Tk, Tk)
            try:
                probs = original(q, k, eye, pe, **{**kwargs, "backend": "reference"})  # (B, H, Tq, Tk)
            except (ValueError, RuntimeError) as exc:
                raise ValueError(f"attention maps: {pe.name}'s attention does not take one-hot values, so its "
                                 f"probabilities cannot be read through the attention call ({exc}).") from exc
            store.append(probs.float())
        return out

    model_module.attention = recording
    try:
        yield
    finally:
        model_module.attention = original


@torch.no_grad()
def attention_data(model, text: str) -> Tensor:
    """Attention probabilities of every layer and head of a decoder or encoder on ``text``: ``(L, H, T, T)``.

    Args:
        model: a :class:`posenc.Transformer` (``kind`` ``"decoder"`` or ``"encoder"``) or the path of a checkpoint
            written by ``Transformer.save``.
        text: the input; its UTF-8 bytes are the tokens (as in the lab's byte-level tasks).

    Rows sum to 1 over the keys each query may see (masked keys are 0).
    """
    from posenc.model import Transformer

    if isinstance(model, (str, os.PathLike)):
        model = _load_model(Path(model))
    if not isinstance(model, Transformer):
        raise TypeError(f"attention maps need a posenc.Transformer or a checkpoint path; got {type(model).__name__}.")
    if model.cfg.kind not in ("decoder", "encoder"):
        raise ValueError(f"attention maps are drawn for 'decoder' and 'encoder' models; this one is "
                         f"{model.cfg.kind!r}.")
    tokens = _text_tokens(text, model.cfg.vocab_size)
    _check_length(max(tokens.shape[1], 2), name="text length (bytes)")
    store: list[Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with _recording_attention(store):
            model(tokens)
    finally:
        model.train(was_training)
    return torch.stack([p[0] for p in store])  # (L, H, T, T)


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
