"""The plot kinds and length limit of :mod:`posenc.viz`, torch-free so that ``posenc --help`` needs no torch."""

# Kinds drawn from one self-attention call on a sentence (posenc.viz.data.AttentionProbe): they take --text.
PROBE_KINDS = ("gates", "logits", "disentangled", "normalizer")
PLOT_KINDS = ("waves", "similarity", "decay", "bias", "wavelengths", "axes", "attention", "grid", "fourier",
              "phases", "generators", *PROBE_KINDS)
MAX_PLOT_LENGTH = 1 << 16  # the most positions (or distances) a 1-D plot draws: far more than its pixels
