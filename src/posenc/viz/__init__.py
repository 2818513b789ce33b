"""Pictures of positional encodings, drawn from the same tensors the models use.

Two layers, kept apart so the numbers can be tested without drawing anything:

- :mod:`posenc.viz.data`: the *data functions* (``waves_data``, ``similarity_data``, ``decay_data``, ``bias_data``,
  ``bias_profile``, ``wavelengths_data``, ``axes_data``, ``attention_data``, ``grid_data``, ``fourier_data``
  (FoPE), ``phases_data`` (PoPE), ``generators_data``, and on one attention call of a sentence,
  :func:`attention_probe`: ``gates_data``, ``logits_data``, ``disentangled_data``, ``normalizer_data``), which call
  an encoding's own hooks and return tensors, and :func:`applicable_kinds` (which plots fit an encoding, from its
  hooks). It needs only torch.
- :mod:`posenc.viz.figures`: the *figure functions* (``waves``, ``similarity``, ``decay``, ``bias``,
  ``wavelengths``, ``axes``, ``attention``, ``grid``, ``fourier``, ``phases``, ``generators``, ``gates``,
  ``logits``, ``disentangled``, ``normalizer``), which draw those tensors and return a
  :class:`matplotlib.figure.Figure`; :func:`plot` dispatches by kind and saves.

The kinds, what each shows and which encodings it applies to are listed in :mod:`posenc.viz.data`. matplotlib is an
optional extra (``pip install posenc[viz]``), imported only when a figure is drawn; this package imports without it.
"""

from __future__ import annotations

from posenc._viz_kinds import MAX_PLOT_LENGTH, PLOT_KINDS, PROBE_KINDS

# The names marked F401 are outside __all__ but were attributes of the single-file posenc.viz (posenc.gallery reads
# viz.DPI), so they stay importable from here.
from posenc.viz.data import (
    MAX_DENSE,
    PROBE_SEED,
    PROBE_TEXT,
    AttentionProbe,
    AxisAllocation,
    DecayCurves,
    Disentangled,
    FourierSpectrum,
    GateDecay,
    LogitChange,
    Normalized,
    PhaseOffsets,
    applicable_kinds,
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
    grid_data,
    logits_data,
    normalizer_data,
    phases_data,
    position_vectors,  # noqa: F401
    resolve_encoding,
    similarity_data,
    token_labels,
    wavelengths_data,
    waves_data,
)
from posenc.viz.figures import (
    DIVERGING,  # noqa: F401
    DPI,  # noqa: F401
    FIGURES,  # noqa: F401
    FORMATS,  # noqa: F401
    SEQUENTIAL,  # noqa: F401
    STYLE,  # noqa: F401
    attention,
    axes,
    bias,
    check_output_path,  # noqa: F401
    decay,
    disentangled,
    fourier,
    gates,
    generators,
    grid,
    logits,
    normalizer,
    phases,
    plot,
    save_figure,
    similarity,
    wavelengths,
    waves,
)

__all__ = [
    "MAX_DENSE",
    "MAX_PLOT_LENGTH",
    "PLOT_KINDS",
    "PROBE_KINDS",
    "PROBE_SEED",
    "PROBE_TEXT",
    "AttentionProbe",
    "AxisAllocation",
    "DecayCurves",
    "FourierSpectrum",
    "Disentangled",
    "GateDecay",
    "LogitChange",
    "Normalized",
    "PhaseOffsets",
    "applicable_kinds",
    "attention",
    "attention_data",
    "attention_probe",
    "axes",
    "axes_data",
    "bias",
    "bias_data",
    "bias_profile",
    "by_distance",
    "decay",
    "decay_data",
    "disentangled",
    "disentangled_data",
    "fourier",
    "fourier_data",
    "gates",
    "gates_data",
    "generators",
    "generators_data",
    "grid",
    "grid_data",
    "logits",
    "logits_data",
    "normalizer",
    "normalizer_data",
    "phases",
    "phases_data",
    "plot",
    "resolve_encoding",
    "save_figure",
    "similarity",
    "similarity_data",
    "token_labels",
    "waves",
    "waves_data",
    "wavelengths",
    "wavelengths_data",
]
