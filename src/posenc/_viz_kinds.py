"""The plot kinds and length limit of :mod:`posenc.viz`, torch-free so that ``posenc --help`` needs no torch."""

PLOT_KINDS = ("waves", "similarity", "decay", "bias", "wavelengths", "attention", "grid")
MAX_PLOT_LENGTH = 1 << 16  # the most positions (or distances) a 1-D plot draws: far more than its pixels
