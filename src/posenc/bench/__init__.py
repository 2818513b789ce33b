"""Benchmarks: side-by-side measurements of posenc against its own baselines, its peers and the copy limit.

Suites (``posenc bench --suite ...``, see :mod:`posenc.cli.bench`):

- ``rope`` (:mod:`posenc.bench.rope`): RoPE forward and forward+backward: posenc's fused paths and reference, Hugging
  Face ``apply_rotary_pos_emb`` (eager and ``torch.compile``), x-transformers, rotary-embedding-torch, Liger (CUDA),
  and the same run's copy bandwidth.
- ``decode`` (:mod:`posenc.bench.rope`): the positional encoding's share of one KV-cache decode step of
  :class:`posenc.Transformer`.
- ``attention`` (:mod:`posenc.bench.attention`): bias attention backends against SDPA without bias.

This package file stays light: importing it imports nothing (it only names the peers, :data:`PEERS`).
"""

# Peer libraries the RoPE suite knows (a missing package gives a row marked ``skipped``); here, so the CLI
# can list them without torch.
PEERS = ("hf", "x-transformers", "rotary-embedding-torch", "liger")
