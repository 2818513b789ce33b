"""The figures of :mod:`posenc.viz`, drawn with matplotlib from the tensors of :mod:`posenc.viz.data`.

The *figure functions* (``waves``, ``similarity``, ``decay``, ``bias``, ``wavelengths``, ``attention``, ``grid``,
and on a sentence ``gates``, ``logits``, ``disentangled``, ``normalizer``) draw those tensors and return a
:class:`matplotlib.figure.Figure`. :func:`plot` dispatches by kind and saves.

matplotlib is an optional extra (``pip install posenc[viz]``); the data functions need only torch. Figures are
built with :class:`matplotlib.figure.Figure` directly (no pyplot), so drawing never opens a window or touches the
global pyplot state. matplotlib is imported only when a figure is drawn, so this module imports without it; a missing
extra is reported then, naming ``posenc[viz]``.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from posenc._viz_kinds import PLOT_KINDS
from posenc.base import PositionalEncoding
from posenc.viz.data import (
    PROBE_TEXT,
    AttentionProbe,
    attention_data,
    attention_probe,
    axes_data,
    bias_data,
    bias_profile,
    by_distance,
    decay_data,
    disentangled_data,
    fourier_data,
    gates_data,
    generators_data,
    given_by_name,
    grid_axes,
    grid_data,
    logits_data,
    normalizer_data,
    phases_data,
    resolve_encoding,
    rope_of,
    similarity_data,
    token_labels,
    wavelengths_data,
    waves_data,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DIVERGING",
    "DPI",
    "FIGURES",
    "FORMATS",
    "SEQUENTIAL",
    "STYLE",
    "attention",
    "axes",
    "bias",
    "check_output_path",
    "decay",
    "disentangled",
    "fourier",
    "gates",
    "grid",
    "logits",
    "normalizer",
    "phases",
    "plot",
    "save_figure",
    "similarity",
    "wavelengths",
    "waves",
]

FORMATS = (".png", ".svg")

# One look for every figure: sizes in inches at DPI, a perceptually uniform map for magnitudes, a diverging one for
# signed values centred on zero.
DPI = 110
SEQUENTIAL = "viridis"
DIVERGING = "RdBu_r"
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "figure.titlesize": 11,
    "legend.fontsize": 8,
    "axes.grid": False,
    "image.interpolation": "nearest",
}

# -- figures -----------------------------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("posenc's plots need matplotlib, an optional extra: pip install 'posenc[viz]' "
                          f"(import failed: {exc}).") from exc
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


@contextlib.contextmanager
def _style() -> Iterator[None]:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("posenc's plots need matplotlib, an optional extra: pip install 'posenc[viz]' "
                          f"(import failed: {exc}).") from exc
    with matplotlib.rc_context(STYLE):
        yield


def _sized(encoding, options: dict, *, dim: int, n_heads: int) -> dict:
    """Default ``dim``/``n_heads`` for an encoding given by name (a built encoding or model keeps its own)."""
    if given_by_name(encoding) and "dim" not in options:
        return {"dim": dim, "n_heads": options.pop("n_heads", n_heads), **options}
    return options


def _label(pe: PositionalEncoding) -> str:
    return pe.name or type(pe).__name__


def _heatmap(fig: Figure, ax, data: Tensor, *, title: str, xlabel: str, ylabel: str, cbar: str,
             diverging: bool = False, extent: tuple[float, float, float, float] | None = None,
             aspect: str = "auto"):
    values = data.detach().cpu().float()
    finite = values[torch.isfinite(values)]
    kwargs = {}
    if diverging and finite.numel():
        lim = float(finite.abs().max()) or 1.0
        kwargs = {"vmin": -lim, "vmax": lim}
    image = ax.imshow(values.numpy(), cmap=DIVERGING if diverging else SEQUENTIAL, aspect=aspect, origin="upper",
                      extent=extent, **kwargs)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, label=cbar, shrink=0.9)
    return image


def waves(encoding, *, length: int = 128, dims: list[int] | None = None, offset: int = 0, **options) -> Figure:
    """Each channel over positions: a (channel x position) heatmap and a few channels as curves.

    Args:
        encoding: a name, :class:`PositionalEncoding`, :class:`posenc.Transformer` or checkpoint path (a trained
            learned table, say); see :func:`resolve_encoding`.
        length: positions drawn, ``offset .. offset + length - 1``.
        dims: channels drawn as curves (default: four spread over the channels).
        **options: ``dim``, ``n_heads``, ``max_seq_len`` and the encoding's own options, when given by name.
    """
    pe = resolve_encoding(encoding, **options)
    data = waves_data(pe, length=length, offset=offset)  # (T, C)
    rope = rope_of(pe) is not None
    channel = "rotary pair i" if rope else "dimension"
    value = "cos(p·θᵢ)" if rope else "value added to the embedding" if pe.uses_embed else "rotated all-ones query"
    n = data.shape[1]
    if dims is None:
        # four channels an octave apart in frequency (the paper's figure shows a few slow and fast ones); even
        # indices are the sines of an interleaved table
        dims = sorted({min(n - 1, 2 * (n // d // 2)) for d in (16, 8, 4, 2)})
    bad = [d for d in dims if not 0 <= d < n]
    if bad:
        raise ValueError(f"dims {bad} are out of range: this encoding has {n} channels ({channel}), 0 .. {n - 1}.")
    with _style():
        fig = _figure(10, 3.8)
        ax_map, ax_lines = fig.subplots(1, 2, width_ratios=[1.25, 1])
        _heatmap(fig, ax_map, data.T, title=f"{_label(pe)}: every channel", xlabel="position (tokens)",
                 ylabel=channel, cbar=value, diverging=True,
                 extent=(offset - 0.5, offset + length - 0.5, n - 0.5, -0.5))
        pos = torch.arange(offset, offset + length).numpy()
        for d in dims:
            ax_lines.plot(pos, data[:, d].numpy(), label=f"{'i' if rope else 'dim'} = {d}", linewidth=1.2)
        ax_lines.set_title(f"{_label(pe)}: selected channels")
        ax_lines.set_xlabel("position (tokens)")
        ax_lines.set_ylabel(value)
        ax_lines.legend(loc="upper right")
        fig.suptitle(f"{_label(pe)} — waves per channel")
    return fig


def similarity(encoding, *, length: int = 128, metric: str = "cosine", offset: int = 0, **options) -> Figure:
    """Position-by-position similarity heatmap and the similarity against offset from the middle position."""
    pe = resolve_encoding(encoding, **options)
    data = similarity_data(pe, length=length, metric=metric, offset=offset)  # (T, T)
    what = "cosine similarity" if metric == "cosine" else "dot product q·k"
    with _style():
        fig = _figure(10, 4)
        ax_map, ax_row = fig.subplots(1, 2, width_ratios=[1.15, 1])
        ext = (offset - 0.5, offset + length - 0.5, offset + length - 0.5, offset - 0.5)
        _heatmap(fig, ax_map, data, title=f"{_label(pe)}: {what} of positions", xlabel="key position (tokens)",
                 ylabel="query position (tokens)", cbar=what, extent=ext)
        mid = length // 2
        ax_row.plot((torch.arange(length) - mid).numpy(), data[mid].numpy(), color="C0", linewidth=1.3)
        ax_row.axvline(0, color="0.6", linewidth=0.8, linestyle="--")
        ax_row.set_title(f"row of query position {offset + mid}")
        ax_row.set_xlabel("offset: key − query (tokens)")
        ax_row.set_ylabel(what)
        fig.suptitle(f"{_label(pe)} — similarity of position vectors")
    return fig


def decay(encoding: str | PositionalEncoding = "rope", *, max_distance: int = 512, **options) -> Figure:
    """RoPE's relative upper bound (Su et al. 2021, section 3.4.3) and ``q·k`` of all-ones vectors vs distance.

    Pass ``base=...`` or (when the RoPE-scaling option exists) ``scaling={...}`` to compare settings.
    """
    pe = resolve_encoding(encoding, **_sized(encoding, options, dim=128, n_heads=1))
    curves = decay_data(pe, max_distance=max_distance)
    rope = rope_of(pe)
    d = curves.distance.numpy()
    with _style():
        fig = _figure(10, 3.6)
        ax_bound, ax_score = fig.subplots(1, 2)
        ax_bound.plot(d, curves.bound.numpy(), color="C0", linewidth=1.2)
        ax_bound.set_title(f"relative upper bound, base={rope.base:g}, d={rope.rotary_dim}")
        ax_bound.set_xlabel("relative distance m − n (tokens)")
        ax_bound.set_ylabel("(1/F) Σⱼ |Sⱼ|")
        ax_score.plot(d, curves.ones_score.numpy(), color="C1", linewidth=1.0)
        ax_score.axhline(0, color="0.6", linewidth=0.8, linestyle="--")
        ax_score.set_title("q·k / D for all-ones q, k")
        ax_score.set_xlabel("relative distance m − n (tokens)")
        ax_score.set_ylabel("normalized score")
        fig.suptitle(f"{_label(pe)} — long-term decay (Su et al. 2021, §3.4.3)")
    return fig


def bias(encoding, *, length: int = 64, heads: int = 8, **options) -> Figure:
    """The ``(H, T, T)`` bias of the first ``heads`` heads, and every head's bias against distance."""
    pe = resolve_encoding(encoding, **_sized(encoding, options, dim=256, n_heads=8))
    data = bias_data(pe, length=length)  # (H, T, T)
    distance, profile = bias_profile(pe, length=length)
    shown = min(heads, data.shape[0])
    if shown < 1:
        raise ValueError(f"heads must be >= 1; got {heads}.")
    cols = min(shown, 4)
    rows = math.ceil(shown / cols)
    finite = data[torch.isfinite(data)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    with _style():
        fig = _figure(2.4 * cols + 3.8, 2.3 * rows + 0.6)
        maps, side = fig.subfigures(1, 2, width_ratios=[2.4 * cols, 3.8])
        axes = maps.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
        image = None
        for h in range(rows * cols):
            ax = axes[h // cols][h % cols]
            if h >= shown:
                ax.set_axis_off()
                continue
            image = ax.imshow(data[h].numpy(), cmap=SEQUENTIAL, vmin=lo, vmax=hi, aspect="equal")
            ax.set_title(f"head {h}")
            if h // cols == rows - 1 or h + cols >= shown:
                ax.set_xlabel("key position (tokens)")
            if h % cols == 0:
                ax.set_ylabel("query position (tokens)")
        maps.colorbar(image, ax=axes, label="bias added to q·k/√d (logits)", shrink=0.85)
        ax = side.subplots()
        for h in range(profile.shape[0]):
            ax.plot(distance.numpy(), profile[h].numpy(), linewidth=1.0, label=f"head {h}")
        ax.set_title("bias vs distance (one query)")
        ax.set_xlabel("key − query (tokens)")
        ax.set_ylabel("bias (logits)")
        if profile.shape[0] <= 8:
            ax.legend(loc="best")
        fig.suptitle(f"{_label(pe)} — attention bias per head (T = {length})")
    return fig


def axes(encoding: str | PositionalEncoding = "videorope", **options) -> Figure:
    """Frequency allocation per axis: each rotary pair's wavelength ``2π/θᵢ``, coloured by the coordinate axis it
    reads (time, height, width; grey = not rotated), and one row per axis marking its pairs -- VideoRoPE's time on
    the lowest frequencies, Qwen2-VL's sections, Qwen3-VL's round robin, HoPE's unrotated temporal pairs."""
    pe = resolve_encoding(encoding, **_sized(encoding, options, dim=128, n_heads=1))
    data = axes_data(pe)
    idx = torch.arange(data.axes.numel()).numpy()
    rows = [*data.names, "not rotated"]
    with _style():
        fig = _figure(10, 4.2)
        ax_w, ax_a = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1.0])
        for a, name in enumerate(rows):
            code = a if a < len(data.names) else -1
            chosen = data.axes == code
            if not bool(chosen.any()):
                continue
            color = f"C{a}" if code >= 0 else "0.6"
            ax_w.scatter(idx[chosen.numpy()], data.wavelengths[chosen].numpy(), s=14, color=color,
                         label=f"{name} ({int(chosen.sum())} pairs)")
            ax_a.scatter(idx[chosen.numpy()], [a] * int(chosen.sum()), s=18, marker="s", color=color)
        ax_w.set_yscale("log")
        ax_w.set_title("wavelength of each rotary pair, by the axis it reads")
        ax_w.set_ylabel("wavelength 2π/θᵢ (positions)")
        ax_w.legend(loc="upper left")
        ax_a.set_yticks(range(len(rows)), rows)
        ax_a.set_ylim(len(rows) - 0.5, -0.5)
        ax_a.set_title("pair -> axis table")
        ax_a.set_xlabel("rotary pair i (low i = high frequency)")
        fig.suptitle(f"{_label(pe)} — frequency allocation per axis (head_dim = {2 * idx.size})")
    return fig


def wavelengths(encoding: str | PositionalEncoding = "rope", *, scaling: dict | None = None, **options) -> Figure:
    """Wavelength ``2π/θᵢ`` of each rotary pair, plain RoPE vs as built (e.g. ``scaling={"rope_type": "yarn",
    "factor": 4.0}`` when the RoPE-scaling option exists), with the context length marked."""
    if scaling is not None:
        options["scaling"] = scaling
    pe = resolve_encoding(encoding, **_sized(encoding, options, dim=128, n_heads=1))
    plain, built = wavelengths_data(pe)
    idx = torch.arange(plain.numel()).numpy()
    scaled = not torch.allclose(plain, built, rtol=1e-12, atol=0.0)
    scaling = getattr(rope_of(pe), "scaling", None) or {}
    what = f"{scaling['rope_type']} scaling" if "rope_type" in scaling else "as built"
    with _style():
        fig = _figure(10, 3.6)
        ax_w, ax_r = fig.subplots(1, 2)
        ax_w.semilogy(idx, plain.numpy(), color="C0", linewidth=1.4, label="plain RoPE")
        if scaled:
            ax_w.semilogy(idx, built.numpy(), color="C3", linewidth=1.4, linestyle="--", label=what)
        original = int(scaling.get("original_max_position_embeddings", pe.max_seq_len))
        ax_w.axhline(original, color="0.4", linewidth=0.9, linestyle=":", label=f"trained context {original}")
        factor = scaling.get("factor")
        if isinstance(factor, (int, float)) and factor > 1:
            ax_w.axhline(original * factor, color="0.4", linewidth=0.9, linestyle="-.",
                         label=f"extended context {original * factor:g}")
        ax_w.set_title("wavelength per rotary pair")
        ax_w.set_xlabel("rotary pair i (low i = high frequency)")
        ax_w.set_ylabel("wavelength 2π/θᵢ (tokens)")
        ax_w.legend(loc="upper left")
        ax_r.plot(idx, (built / plain).numpy(), color="C3" if scaled else "C0", linewidth=1.4)
        ax_r.set_title("stretch factor (as built / plain)")
        ax_r.set_xlabel("rotary pair i")
        ax_r.set_ylabel("wavelength ratio (×)")
        fig.suptitle(f"{_label(pe)} — frequency bands, " + (what if scaled else "no scaling"))
    return fig


def fourier(encoding: str | PositionalEncoding = "fope", *, length: int = 128, offset: int = 0, **options) -> Figure:
    """FoPE's spectrum: the mean ``|C^cos|`` (kept frequency x rotary pair) and a few pairs' Fourier waves beside
    plain RoPE's ``cos(p theta_d)`` (arXiv 2412.17739)."""
    pe = resolve_encoding(encoding, **options)
    data = fourier_data(pe, length=length, offset=offset)
    kept, pairs = data.coefficients.shape[0], data.waves.shape[1]
    shown = sorted({0, kept - 1, min(kept, pairs - 1)})  # the fastest and slowest kept pairs, the first clipped one
    pos = torch.arange(offset, offset + length).numpy()
    with _style():
        fig = _figure(10, 3.8)
        ax_map, ax_lines = fig.subplots(1, 2, width_ratios=[1, 1.25])
        _heatmap(fig, ax_map, data.coefficients, title=f"{_label(pe)}: mean |C^cos| over heads",
                 xlabel="rotary pair d (output)", ylabel="kept frequency m (input)", cbar="|coefficient|",
                 aspect="equal")
        for axis in (ax_map.xaxis, ax_map.yaxis):
            axis.get_major_locator().set_params(integer=True)  # pairs and frequencies are indices
        for i, d in enumerate(shown):
            what = "clipped" if d >= kept else "kept"
            ax_lines.plot(pos, data.waves[:, d].numpy(), color=f"C{i}", linewidth=1.3, label=f"FoPE pair {d} ({what})")
            ax_lines.plot(pos, data.rope[:, d].numpy(), color=f"C{i}", linewidth=0.9, linestyle="--",
                          label=f"RoPE pair {d}")
        ax_lines.set_title("first head: cos'_d(p) (solid) and cos(p·θ_d) (dashed)")
        ax_lines.set_xlabel("position (tokens)")
        ax_lines.set_ylabel("cos'_d(p)")
        ax_lines.legend(loc="upper right", fontsize=7)
        fig.suptitle(f"{_label(pe)} — Fourier spectrum: {kept} kept frequencies, {pairs - kept} clipped pairs "
                     f"({pe.clipped})")
    return fig


def phases(encoding: str | PositionalEncoding = "pope", *, max_distance: int = 128, heads: int = 4,
           **options) -> Figure:
    """PoPE's learned phase offsets ``delta`` (head x channel) and each head's score against distance for unit
    magnitudes, beside the score without offsets (arXiv 2509.10534)."""
    pe = resolve_encoding(encoding, **options)
    data = phases_data(pe, max_distance=max_distance)
    shown = min(heads, data.score.shape[0])
    with _style():
        fig = _figure(10, 3.8)
        ax_map, ax_lines = fig.subplots(1, 2, width_ratios=[1, 1.25])
        _heatmap(fig, ax_map, data.offsets, title=f"{_label(pe)}: phase offset δ per head",
                 xlabel="channel c (low c = high frequency)", ylabel="head", cbar="δ (radians, in [−2π, 0])")
        for axis in (ax_map.xaxis, ax_map.yaxis):
            axis.get_major_locator().set_params(integer=True)  # heads and channels are indices
        dist = data.distance.numpy()
        for h in range(shown):
            ax_lines.plot(dist, data.score[h].numpy(), linewidth=1.2, label=f"head {h}")
        ax_lines.plot(dist, data.no_offset.numpy(), color="0.3", linewidth=1.0, linestyle="--", label="δ = 0")
        ax_lines.set_title("score for unit magnitudes: (1/d) Σ cos(n·θ_c − δ_c)")
        ax_lines.set_xlabel("distance n = query − key (tokens)")
        ax_lines.set_ylabel("score")
        ax_lines.legend(loc="upper right")
        fig.suptitle(f"{_label(pe)} — phase offsets")
    return fig


def attention(model, text: str, *, layers: list[int] | None = None, heads: int = 4) -> Figure:
    """Attention maps of a trained :class:`posenc.Transformer` (or checkpoint path) on ``text``: layers x heads."""
    probs = attention_data(model, text)  # (L, H, T, T)
    n_layers, n_heads, t, _ = probs.shape
    layers = list(range(n_layers)) if layers is None else layers
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers:
        raise ValueError(f"layers {layers} are out of range: the model has {n_layers} layers, 0 .. {n_layers - 1}.")
    shown = max(1, min(heads, n_heads))
    labels = token_labels(text)  # one per byte
    with _style():
        fig = _figure(2.5 * shown + 1.2, 2.5 * len(layers) + 0.6)
        axes = fig.subplots(len(layers), shown, squeeze=False)
        image = None
        for r, layer in enumerate(layers):
            for h in range(shown):
                ax = axes[r][h]
                image = ax.imshow(probs[layer, h].numpy(), cmap=SEQUENTIAL, vmin=0.0, vmax=1.0, aspect="equal")
                ax.set_title(f"layer {layer}, head {h}")
                ax.set_xlabel("key token")
                ax.set_ylabel("query token")
                if t <= 32:
                    ax.set_xticks(range(t), labels, fontsize=6)
                    ax.set_yticks(range(t), labels, fontsize=6)
        fig.colorbar(image, ax=axes, label="attention probability", shrink=0.85)
        pe = model.pe if not isinstance(model, (str, os.PathLike)) else None
        name = _label(pe) if pe is not None else Path(model).name
        fig.suptitle(f"attention maps — {name}, {t} tokens")
    return fig


def grid(encoding, *, height: int = 16, width: int = 16, channels: int = 4, **options) -> Figure:
    """Position vectors over a 2-D grid as images: similarity to the centre cell and a few channels spread out."""
    from matplotlib.ticker import MaxNLocator

    pe = resolve_encoding(encoding, **options)
    images, sim = grid_data(pe, height=height, width=width)
    n = images.shape[0]
    picked = sorted({round(j * (n - 1) / max(channels - 1, 1)) for j in range(channels)}) if channels > 0 else []
    axes_names = grid_axes(pe)
    if axes_names is not None:
        layout = f"coordinates ({axes_names[0]}, {axes_names[1]})"
        ylabel, xlabel = axes_names
    else:
        layout = f"1-D positions 0..{height * width - 1} laid out row by row"
        ylabel, xlabel = "row (positions / width)", "column (positions mod width)"
    with _style():
        fig = _figure(2.6 * (len(picked) + 1) + 1.5, 3.1)
        axes = fig.subplots(1, len(picked) + 1, squeeze=False)[0]
        _heatmap(fig, axes[0], sim, title="cosine to centre cell", xlabel=xlabel, ylabel=ylabel,
                 cbar="cosine similarity", aspect="equal")
        lim = float(images[picked].abs().max()) if picked else 1.0
        image = None
        for ax, c in zip(axes[1:], picked):
            image = ax.imshow(images[c].numpy(), cmap=DIVERGING, vmin=-lim, vmax=lim, aspect="equal")
            ax.set_title(f"channel {c}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if image is not None:
            fig.colorbar(image, ax=list(axes[1:]), label="channel value", shrink=0.85)
        fig.suptitle(f"{_label(pe)} — {height}×{width} grid ({layout})")
    return fig


def generators(encoding, *, set_index: int = 0, **options) -> Figure:
    """A learned rotation's generators ``L_k`` as ``D x D`` heatmaps, one per axis, and their largest commutator."""
    pe = resolve_encoding(encoding, **options)
    gens, comm = generators_data(pe, set_index=set_index)
    n_axes = gens.shape[0]
    names = tuple(getattr(pe, "axis_names", ()) or ())
    names = names if len(names) == n_axes else tuple(str(k) for k in range(n_axes))
    worst = float(comm.max()) / max(float(gens.abs().max()) ** 2, 1e-300)  # relative: the scale is folded in
    with _style():
        fig = _figure(3.4 * n_axes + 0.6, 3.3)
        axes = fig.subplots(1, n_axes, squeeze=False)[0]
        for k, ax in enumerate(axes):
            _heatmap(fig, ax, gens[k], title=f"L_{k} (axis {names[k]})", xlabel="channel", ylabel="channel",
                     cbar="generator entry", diverging=True, aspect="equal")
        relative = "commute: exactly relative" if worst < 1e-9 else \
            f"max |[L_j, L_k]| / max |L|² = {worst:.3g}: not relative"
        fig.suptitle(f"{_label(pe)} — generators of set {set_index} ({relative})")
    return fig


# -- pictures of one attention call on a sentence (the probe kinds) ----------------------------------------------------
MAX_TOKEN_TICKS = 64  # label every token on an axis up to this many; longer inputs get numbered ticks


def _probe(encoding, text: str, layer: int, options: dict, *, causal: bool) -> AttentionProbe:
    """The probe call of a figure; an encoding given by name is built for ``causal`` attention unless told."""
    if given_by_name(encoding):
        options.setdefault("causal", causal)
    return attention_probe(encoding, text=text, layer=layer, **options)


def _shown(heads: int, n_heads: int) -> int:
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"heads must be an int >= 1 (how many heads to draw); got {heads!r}.")
    return min(heads, n_heads)


def _hidden(values: Tensor, visible: Tensor) -> Tensor:
    """``values`` ``(..., Tq, Tk)`` as float32 on the CPU, NaN (drawn blank) where a query may not see the key."""
    return values.detach().float().cpu().masked_fill(~visible.cpu(), float("nan"))


def _limit(values: Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.abs().max()) if finite.numel() and float(finite.abs().max()) > 0 else 1.0


def _token_ticks(ax, labels: tuple[str, ...], *, x: bool = True, y: bool = True) -> None:
    n = len(labels)
    if n > MAX_TOKEN_TICKS:
        return
    size = 7 if n <= 24 else 5
    if x:
        ax.set_xticks(range(n), labels, fontsize=size)
    if y:
        ax.set_yticks(range(n), labels, fontsize=size)


def _quoted(text: str, limit: int = 48) -> str:
    return f"“{text}”" if len(text) <= limit else f"“{text[:limit - 1]}…”"


def _probe_title(pe: PositionalEncoding, what: str, probe: AttentionProbe) -> str:
    direction = "causal" if probe.call.causal else "bidirectional"
    # three short lines, so that a figure of one or two heads does not clip them
    return f"{_label(pe)} — {what}\non {_quoted(probe.text)}\n({direction}; {probe.source})"


def logits(encoding, *, text: str = PROBE_TEXT, heads: int = 4, layer: int = 0, **options) -> Figure:
    """What the encoding adds to the attention logits on a sentence (:func:`posenc.viz.data.logits_data`).

    Top row: the added logits of every (query, key) pair per head; bottom row: the same against the distance
    ``key - query`` (row ``i``: query ``i``'s own profile, e.g. Inkling's ``(r_i . P)``). Keys a query may not see
    are blank.

    Args:
        encoding: a name (built causal unless ``causal=False`` is passed), a :class:`PositionalEncoding`, or a
            :class:`posenc.Transformer` / checkpoint path (its layer ``layer``); see
            :func:`posenc.viz.data.attention_probe`.
        text: the sentence; its UTF-8 bytes are the tokens.
        heads: how many heads to draw (the first ones).
        **options: ``dim``, ``n_heads``, ``causal`` and the encoding's own options, when given by name.
    """
    probe = _probe(encoding, text, layer, options, causal=True)
    change = logits_data(probe)
    distance, profiles = by_distance(change.added, change.visible)  # (N,), (H, Tq, N)
    shown = _shown(heads, change.added.shape[0])
    added = _hidden(change.added[:shown], change.visible)
    profiles = profiles[:shown].float().cpu()
    lim = _limit(added)
    t = len(change.labels)
    d = distance.cpu()
    with _style():
        fig = _figure(3.1 * shown + 1.2, 6.6)
        axes = fig.subplots(2, shown, squeeze=False, sharey=True)
        image = None
        for h in range(shown):
            ax = axes[0][h]
            image = ax.imshow(added[h].numpy(), cmap=DIVERGING, vmin=-lim, vmax=lim, aspect="equal")
            ax.set_title(f"head {h}")
            ax.set_xlabel("key token")
            _token_ticks(ax, change.labels, y=h == 0)
            ax = axes[1][h]
            ax.imshow(profiles[h].numpy(), cmap=DIVERGING, vmin=-lim, vmax=lim, aspect="auto",
                      extent=(float(d[0]) - 0.5, float(d[-1]) + 0.5, t - 0.5, -0.5))
            ax.set_title(f"head {h}: by distance")
            ax.set_xlabel("key − query (tokens)")
            _token_ticks(ax, change.labels, x=False, y=h == 0)
        for row in axes:
            row[0].set_ylabel("query token")
        fig.colorbar(image, ax=axes, label="added to the logits (logits − q·k·scale)", shrink=0.85)
        fig.suptitle(_probe_title(probe.pe, "what it adds to the attention logits", probe))
    return fig


def gates(encoding, *, text: str = PROBE_TEXT, heads: int = 8, layer: int = 0, **options) -> Figure:
    """Forget gates on a sentence (FoX, data-dependent ALiBi): the input, the decay it adds, and plain ALiBi.

    Left: each head's log gate ``log f_t`` per token, from the encoding's ``features()`` (dashed: the reversed set
    of a bidirectional data-dependent ALiBi). Middle: the decay ``c_i - c_j`` the terms add to the logits of one
    query (the last; the middle one when bidirectional) against ``key - query``. Right: the registered ``alibi``'s
    bias for the same query, heads and direction. Arguments as :func:`logits`.
    """
    probe = _probe(encoding, text, layer, options, causal=True)
    data = gates_data(probe)
    shown = _shown(heads, data.log_f.shape[0])
    log_f = data.log_f[:shown].float().cpu()
    d = data.distance.cpu().numpy()
    tokens = torch.arange(log_f.shape[1]).numpy()
    with _style():
        fig = _figure(13, 4.0)
        ax_gate, ax_decay, ax_alibi = fig.subplots(1, 3, width_ratios=[1.3, 1, 1])
        for h in range(shown):
            color = f"C{h % 10}"
            ax_gate.plot(tokens, log_f[h, :, 0].numpy(), color=color, linewidth=1.1, marker=".", markersize=3,
                         label=f"head {h}")
            if log_f.shape[-1] == 2:
                ax_gate.plot(tokens, log_f[h, :, 1].numpy(), color=color, linewidth=0.9, linestyle="--")
            ax_decay.plot(d, data.profile[h].float().cpu().numpy(), color=color, linewidth=1.2, label=f"head {h}")
            ax_alibi.plot(d, data.alibi[h].float().cpu().numpy(), color=color, linewidth=1.2, label=f"head {h}")
        ax_gate.set_title("input: log forget gate per token" + (" (dashed: reversed set)"
                                                               if log_f.shape[-1] == 2 else ""))
        ax_gate.set_xlabel("token")
        ax_gate.set_ylabel("log fₜ")
        _token_ticks(ax_gate, data.labels, y=False)
        query = data.labels[data.query]
        ax_decay.set_title(f"decay cᵢ − cⱼ seen by query {data.query} ‘{query}’")
        ax_alibi.set_title("plain ALiBi (alibi), same heads")
        for ax in (ax_decay, ax_alibi):
            ax.axvline(0, color="0.6", linewidth=0.8, linestyle="--")
            ax.set_xlabel("key − query (tokens)")
            ax.set_ylabel("added to the logits")
        if shown <= 8:
            ax_decay.legend(loc="best")
        fig.suptitle(_probe_title(probe.pe, "forget gates", probe))
    return fig


def disentangled(encoding, *, text: str = PROBE_TEXT, heads: int = 4, layer: int = 0, **options) -> Figure:
    """DeBERTa's disentangled attention on a sentence: content, c2p and p2c per head, as they enter the logits.

    An encoding given by name is built for bidirectional attention (DeBERTa is an encoder) unless ``causal=True``
    is passed. Arguments as :func:`logits`.
    """
    probe = _probe(encoding, text, layer, options, causal=False)
    data = disentangled_data(probe)
    shown = _shown(heads, data.c2p.shape[0])
    rows = (("content q·k", data.content), ("content-to-position (c2p)", data.c2p),
            ("position-to-content (p2c)", data.p2c))
    with _style():
        fig = _figure(3.0 * shown + 1.6, 9.3)
        axes = fig.subplots(3, shown, squeeze=False, sharex=True, sharey=True)
        for r, (name, values) in enumerate(rows):
            shown_values = _hidden(values[:shown], data.visible)
            lim = _limit(shown_values)
            image = None
            for h in range(shown):
                ax = axes[r][h]
                image = ax.imshow(shown_values[h].numpy(), cmap=DIVERGING, vmin=-lim, vmax=lim, aspect="equal")
                ax.set_title(f"{name}, head {h}", fontsize=8)
                if r == len(rows) - 1:
                    ax.set_xlabel("key token")
                _token_ticks(ax, data.labels, x=r == len(rows) - 1, y=h == 0)
            axes[r][0].set_ylabel("query token")
            fig.colorbar(image, ax=list(axes[r]), label="logit part", shrink=0.9)
        fig.suptitle(_probe_title(probe.pe, "content, c2p and p2c logits", probe))
    return fig


def normalizer(encoding, *, text: str = PROBE_TEXT, heads: int = 4, layer: int = 0, **options) -> Figure:
    """An encoding's normaliser (stick-breaking, sinks) beside the softmax of the same logits, and the unspent mass.

    Top row: the masked softmax of the call's logits; bottom row: the encoding's weights on the same logits; right:
    ``1 - sum_j w_ij`` per query and head (the sink's share, or stick-breaking's remainder). Arguments as
    :func:`logits`.
    """
    probe = _probe(encoding, text, layer, options, causal=True)
    data = normalizer_data(probe)
    shown = _shown(heads, data.weights.shape[0])
    softmax = _hidden(data.softmax[:shown], data.visible)
    weights = _hidden(data.weights[:shown], data.visible)
    top = max(_limit(softmax), _limit(weights))
    unspent = data.unspent.float().cpu()
    tokens = torch.arange(unspent.shape[1]).numpy()
    with _style():
        fig = _figure(2.9 * shown + 4.8, 6.4)
        maps, side = fig.subfigures(1, 2, width_ratios=[2.9 * shown + 1.0, 3.8])
        axes = maps.subplots(2, shown, squeeze=False, sharex=True, sharey=True)
        image = None
        for r, (name, values) in enumerate((("softmax", softmax), (_label(probe.pe), weights))):
            for h in range(shown):
                ax = axes[r][h]
                image = ax.imshow(values[h].numpy(), cmap=SEQUENTIAL, vmin=0.0, vmax=top, aspect="equal")
                ax.set_title(f"{name}, head {h}", fontsize=8)
                if r == 1:
                    ax.set_xlabel("key token")
                _token_ticks(ax, data.labels, x=r == 1, y=h == 0)
            axes[r][0].set_ylabel("query token")
        maps.colorbar(image, ax=axes, label="attention weight", shrink=0.85)
        ax = side.subplots()
        for h in range(unspent.shape[0]):
            ax.plot(tokens, unspent[h].numpy(), linewidth=1.1, marker=".", markersize=3, label=f"head {h}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("mass left unspent: 1 − Σⱼ wᵢⱼ")
        ax.set_xlabel("query token")
        ax.set_ylabel("unspent (sink's share / remainder)")
        _token_ticks(ax, data.labels, y=False)
        if unspent.shape[0] <= 8:
            ax.legend(loc="best")
        fig.suptitle(_probe_title(probe.pe, "attention weights vs softmax", probe))
    return fig


# -- dispatch and saving -----------------------------------------------------------------------------------------------
FIGURES: dict[str, Callable[..., Figure]] = {
    "waves": waves,
    "similarity": similarity,
    "decay": decay,
    "bias": bias,
    "wavelengths": wavelengths,
    "axes": axes,
    "attention": attention,
    "grid": grid,
    "fourier": fourier,
    "phases": phases,
    "generators": generators,
    "gates": gates,
    "logits": logits,
    "disentangled": disentangled,
    "normalizer": normalizer,
}


def check_output_path(out: str | os.PathLike) -> Path:
    """Validate where a figure goes: a ``.png`` or ``.svg`` name in an existing, writable directory."""
    path = Path(out)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"cannot save a figure as {str(path)!r}: the name must end in {' or '.join(FORMATS)}.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist (or is not a "
                         f"directory). Hint: create it first (mkdir -p {parent}).")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"cannot write {str(path)!r}: permission denied. Hint: choose a directory you can write to.")
    if path.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: it is a directory; give a file name ending in .png or .svg.")
    return path


def save_figure(fig: Figure, out: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG or SVG (by the name's suffix); returns the path."""
    path = check_output_path(out)
    try:
        fig.savefig(path, format=path.suffix.lower()[1:], dpi=DPI)
    except OSError as exc:
        raise ValueError(f"cannot write {str(path)!r}: {exc.strerror or exc}.") from exc
    return path


def plot(kind: str, encoding, *, out: str | os.PathLike | None = None, **kwargs) -> Figure:
    """Draw ``kind`` (one of :data:`PLOT_KINDS`) for ``encoding`` and save it to ``out`` when given.

    For ``attention``, ``encoding`` is the model (or checkpoint path) and ``text=`` is required.

    Example:
        >>> fig = plot("similarity", "sinusoidal", length=64, out="sim.png")
    """
    if kind not in FIGURES:
        close = difflib.get_close_matches(str(kind), FIGURES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown plot kind {kind!r}.{hint} Kinds: {', '.join(PLOT_KINDS)}.")
    if out is not None:
        check_output_path(out)  # fail before drawing
    fig = FIGURES[kind](encoding, **kwargs)
    if out is not None:
        save_figure(fig, out)
    return fig
