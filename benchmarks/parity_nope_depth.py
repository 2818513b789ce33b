"""Why posenc's NoPE trails x-transformers at 4 layers on ``decoder_copy``: initialisation variants, same batches.

Usage (from the repository root; ~6 CPU-minutes per contender at 3000 steps)::

    PYTHONPATH=src python benchmarks/parity_nope_depth.py SEED STEPS CONTENDERS

``CONTENDERS`` is a comma-separated list of: ``xt`` (x-transformers, NoPE: ``use_abs_pos_emb=False``), ``posenc``
(today's recipe, ``Transformer.reset_parameters``), ``emb_small`` (posenc with x-transformers' embedding scale:
kaiming-normal entries of std sqrt(2/dim), after posenc's sqrt(dim) gain), ``linear_default`` (PyTorch's default
``nn.Linear`` init for every projection but the head), ``head_default`` (PyTorch's default for the head only),
``both`` (emb_small + linear_default), ``all`` (emb_small + PyTorch's default for every Linear, head included: the
initialisation x-transformers uses). Every contender trains on the same batches with the same optimiser, schedule,
clipping and evaluation (:func:`posenc.lab.parity.train_side_by_side`); the decoder is the lab's (d128, 4 heads,
ffn 2x) at 4 layers, lr 1e-3, batch 32, lengths 1..20, evaluated at length 20. Prints one JSON line.
Results so far: docs/results/parity_nope_depth.md.
"""
import json
import math
import sys
import time

import torch
from torch import nn
from x_transformers import Decoder, TransformerWrapper

from posenc.lab.parity import train_side_by_side
from posenc.lab.tasks import get_task
from posenc.model import Transformer, TransformerConfig

DIM, LAYERS, HEADS, FFN, LONGEST = 128, 4, 4, 2.0, 20


def _posenc(task, seed: int, max_len: int) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(kind="decoder", vocab_size=task.vocab_size, dim=DIM, n_layers=LAYERS,
                                         n_heads=HEADS, ffn_mult=FFN, max_seq_len=max_len, encoding="nope"))


def _x_transformers(task, seed: int, max_len: int) -> nn.Module:
    torch.manual_seed(seed)
    return TransformerWrapper(num_tokens=task.vocab_size, max_seq_len=max_len, use_abs_pos_emb=False,
                              attn_layers=Decoder(dim=DIM, depth=LAYERS, heads=HEADS, attn_dim_head=DIM // HEADS,
                                                  ff_mult=FFN))


def _variant(name: str, task, seed: int, max_len: int) -> nn.Module:
    if name == "xt":
        return _x_transformers(task, seed, max_len)
    model = _posenc(task, seed, max_len)
    small_embedding = name in ("emb_small", "both", "all")
    default_linears = name in ("linear_default", "both", "all")
    default_head = name in ("head_default", "all")
    if name not in ("posenc", "emb_small", "linear_default", "head_default", "both", "all"):
        raise ValueError(f"unknown contender {name!r}")
    if small_embedding:  # kaiming-normal entries of std sqrt(2/dim) once posenc's sqrt(dim) gain is applied
        nn.init.normal_(model.tok_emb.weight, std=math.sqrt(2 / DIM) / math.sqrt(DIM))
    for module in model.modules():
        if isinstance(module, nn.Linear) and (default_head if module is model.head else default_linears):
            module.reset_parameters()
    return model


def main() -> None:
    seed, steps, names = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    torch.set_num_threads(1)
    task = get_task("decoder_copy")
    max_len = task.sequence_length(LONGEST)
    contenders = {name: _variant(name, task, seed, max_len) for name in names}
    start = time.time()
    out = train_side_by_side("decoder_copy", steps=steps, dim=DIM, n_layers=LAYERS, n_heads=HEADS, lr=1e-3,
                             train_lengths=(1, LONGEST), ffn_mult=FFN, seed=seed, contenders=contenders)
    rounded = {name: {k: round(v, 4) for k, v in row.items() if isinstance(v, float)} for name, row in out.items()}
    print(json.dumps({"seed": seed, "steps": steps, "wall": round(time.time() - start), **rounded}))


if __name__ == "__main__":
    main()
