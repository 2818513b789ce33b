"""Batches for encoder-decoder tasks: padded source, ``<s> target`` decoder inputs, ``target </s>`` targets."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import IGNORE

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def seq2seq_batch(sources: list[list[int]], targets: list[list[int]], *, pad: int, bos: int, eos: int,
                  src_len: int, tgt_len: int) -> dict[str, Tensor]:
    """``inputs`` ``(B, src_len)`` + ``padding_mask``; ``decoder_inputs`` and ``targets`` ``(B, tgt_len + 1)``.

    Targets past ``</s>`` are ``IGNORE``; decoder inputs there are padding, which a causal decoder never lets an
    earlier position see, so no decoder mask is needed.
    """
    b = len(sources)
    inputs = torch.full((b, src_len), pad, dtype=torch.long)
    dec = torch.full((b, tgt_len + 1), pad, dtype=torch.long)
    out = torch.full((b, tgt_len + 1), IGNORE, dtype=torch.long)
    for i, (src, tgt) in enumerate(zip(sources, targets)):
        inputs[i, :len(src)] = torch.tensor(src, dtype=torch.long)
        dec[i, :len(tgt) + 1] = torch.tensor([bos, *tgt], dtype=torch.long)
        out[i, :len(tgt) + 1] = torch.tensor([*tgt, eos], dtype=torch.long)
    return {"inputs": inputs, "padding_mask": inputs != pad, "decoder_inputs": dec, "targets": out}
