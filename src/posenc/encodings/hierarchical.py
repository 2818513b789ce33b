"""Hierarchical (multi-scale) positions: token in sentence, sentence in paragraph, paragraph in document.

Each token has three coordinates ``(token_in_sentence, sentence_in_paragraph, paragraph_in_document)``, each encoded
by its own sinusoidal table (Vaswani et al., arXiv 1706.03762) or learned table, and the three are summed or
concatenated into one ``dim``-wide vector added to the token embedding -- the hierarchical positional encoding of
document models such as HIBERT (Zhang et al. 2019, arXiv 1905.06566) and the sentence/paragraph position embeddings
of long-document Transformers.

Where the levels come from (given to the model as ``model(tokens, positions=Positions(...))``, or to
:meth:`~posenc.PositionalEncoding.bind` for a direct hook call):

- **token ids**: build the encoding with ``sentence_end_ids`` / ``paragraph_end_ids`` and give
  ``Positions(token_ids=tokens)``, the ``(B, T)`` token ids the model sees. A boundary token belongs to the sentence
  (paragraph) it ends; a paragraph end also ends its sentence. :func:`hierarchical_levels` is the pure function
  behind it.
- **explicit levels**: ``Positions(coordinates=levels)`` with an int64 ``(T, 3)`` or ``(B, T, 3)`` tensor; or pass
  ``(B, T, 3)`` levels straight to ``pe.embed(x, levels)``.

The model passes plain positions ``(T,)`` / ``(B, T)``; with levels given they index them (so a KV cache reads the
same levels as a full forward), and positions past them continue the last sentence (for generation, give the tokens
so far again to pick up new boundaries). With nothing given, a sequence is one sentence in one paragraph: levels
``(p, 0, 0)``.

Example::

    model = Transformer(TransformerConfig(encoding="hierarchical", encoding_options={
        "sentence_end_ids": [ord(".")], "paragraph_end_ids": [ord("\\n")]}))
    logits = model(tokens, positions=Positions(token_ids=tokens))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc._checks import check_int, is_int, reads_values
from posenc.base import PositionalEncoding, register
from posenc.encodings._structured import StructuredPositions
from posenc.encodings.sinusoidal import sinusoidal_table
from posenc.positions import Positions

__all__ = ["HierarchicalPE", "hierarchical_levels"]

LEVELS = ("token_in_sentence", "sentence_in_paragraph", "paragraph_in_document")


def _ids_tensor(ids: Sequence[int], name: str) -> Tensor:
    ids = tuple(ids)
    if not all(is_int(i) for i in ids):
        raise TypeError(f"hierarchical: {name} must be a sequence of int token ids; got {ids!r}.")
    return torch.tensor(ids, dtype=torch.long)


def hierarchical_levels(tokens: Tensor, *, sentence_end_ids: Sequence[int] = (),
                        paragraph_end_ids: Sequence[int] = ()) -> Tensor:
    """``(token_in_sentence, sentence_in_paragraph, paragraph_in_document)`` of every token.

    Args:
        tokens: int token ids ``(T,)`` or ``(B, T)``.
        sentence_end_ids: ids that end a sentence (the token is the last of its sentence).
        paragraph_end_ids: ids that end a paragraph (and the sentence it is in).

    Returns:
        int64 ``(..., T, 3)``.

    Example:
        >>> # "a b . c . <p> d" with "." = 9 ending sentences and "<p>" = 8 ending paragraphs
        >>> hierarchical_levels(torch.tensor([1, 2, 9, 3, 9, 8, 4]), sentence_end_ids=[9],
        ...                     paragraph_end_ids=[8]).tolist()
        [[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0], [1, 1, 0], [0, 2, 0], [0, 0, 1]]
    """
    if not isinstance(tokens, Tensor) or tokens.dtype.is_floating_point or tokens.dtype == torch.bool or \
            tokens.dim() not in (1, 2):
        raise TypeError(f"hierarchical_levels: tokens must be an integer tensor of shape (T,) or (B, T); got "
                        f"{tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__}"
                        f"{'' if not isinstance(tokens, Tensor) else f' of shape {tuple(tokens.shape)}'}.")
    sent_ids = _ids_tensor(sentence_end_ids, "sentence_end_ids").to(tokens.device)
    para_ids = _ids_tensor(paragraph_end_ids, "paragraph_end_ids").to(tokens.device)
    para_end = torch.isin(tokens, para_ids)
    sent_end = torch.isin(tokens, sent_ids) | para_end
    # a sentence (paragraph) starts at index 0 and right after each sentence (paragraph) end
    sent_start = F.pad(sent_end[..., :-1], (1, 0), value=True)
    para_start = F.pad(para_end[..., :-1], (1, 0), value=True)
    idx = torch.arange(tokens.shape[-1], device=tokens.device).expand_as(tokens)
    token_in_sentence = idx - torch.where(sent_start, idx, 0).cummax(-1).values
    sentence_global = sent_start.long().cumsum(-1) - 1
    first_sentence_of_paragraph = torch.where(para_start, sentence_global, 0).cummax(-1).values
    sentence_in_paragraph = sentence_global - first_sentence_of_paragraph
    paragraph = para_start.long().cumsum(-1) - 1
    return torch.stack((token_in_sentence, sentence_in_paragraph, paragraph), dim=-1)


@register("hierarchical")
class HierarchicalPE(StructuredPositions, PositionalEncoding):
    """Multi-scale position: token in sentence, sentence in paragraph, paragraph in document (arXiv 1905.06566).

    Three per-level encodings (sinusoidal, arXiv 1706.03762, or learned) summed or concatenated and added to the
    token embeddings; see the module docstring for how levels are given.

    Args:
        kind: ``"sinusoidal"`` (defined at any level value) or ``"learned"`` (tables of ``max_seq_len``,
            ``max_sentences`` and ``max_paragraphs`` rows; larger values raise).
        combine: ``"concat"`` (the default: level widths ``dim - 2 * (dim // 3)``, ``dim // 3``, ``dim // 3``,
            concatenated) or ``"sum"`` (each level ``dim`` wide, added). With ``kind="sinusoidal"``, ``"sum"`` uses
            the same frequencies for every level, so it is symmetric in them: levels ``(2, 1, 5)`` and ``(5, 2, 1)``
            get the same vector (to 1e-7) and "sentence 1 of paragraph 2" cannot be told from "sentence 2 of
            paragraph 1" -- the lab's ``sentence_index`` task measured it (0.57 accuracy with sum, 1.00 with
            concat). Use ``"sum"`` with ``kind="learned"``, whose tables differ.
        sentence_end_ids: token ids ending a sentence, used for ``Positions(token_ids=...)``.
        paragraph_end_ids: token ids ending a paragraph, used for ``Positions(token_ids=...)``.
        max_sentences: rows of the learned sentence-in-paragraph table.
        max_paragraphs: rows of the learned paragraph-in-document table.
        base: wavelength base of the sinusoidal tables.
        init_std: standard deviation of the learned tables' normal initialisation.
    """

    family = "multiscale"
    paper = "1905.06566"
    extrapolates = True
    n_axes = 3
    axis_names = LEVELS
    reads = ("coordinates", "token_ids")

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 kind: str = "sinusoidal", combine: str = "concat", sentence_end_ids: Sequence[int] = (),
                 paragraph_end_ids: Sequence[int] = (), max_sentences: int = 256, max_paragraphs: int = 64,
                 base: float = 10000.0, init_std: float = 0.02) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if kind not in ("sinusoidal", "learned"):
            raise ValueError(f"hierarchical: kind must be 'sinusoidal' or 'learned'; got {kind!r}.")
        if combine not in ("sum", "concat"):
            raise ValueError(f"hierarchical: combine must be 'sum' or 'concat'; got {combine!r}.")
        if combine == "concat" and dim < 3:
            raise ValueError(f"hierarchical: combine='concat' splits dim over three levels; dim={dim} is too small.")
        for arg, value in (("max_sentences", max_sentences), ("max_paragraphs", max_paragraphs)):
            check_int(value, f"hierarchical: {arg}", minimum=1)
        if not base > 1:
            raise ValueError(f"hierarchical: base must be > 1; got {base}.")
        self.kind, self.combine, self.base = kind, combine, float(base)
        self.sentence_end_ids = tuple(_ids_tensor(sentence_end_ids, "sentence_end_ids").tolist())
        self.paragraph_end_ids = tuple(_ids_tensor(paragraph_end_ids, "paragraph_end_ids").tolist())
        self.limits = (max_seq_len, max_sentences, max_paragraphs)  # rows of the learned tables
        self.widths = (dim, dim, dim) if combine == "sum" else (dim - 2 * (dim // 3), dim // 3, dim // 3)
        self.extrapolates = kind == "sinusoidal"
        if kind == "learned":
            self.tables = nn.ParameterList(nn.Parameter(torch.randn(rows, width) * init_std)
                                           for rows, width in zip(self.limits, self.widths))

    # -- levels --------------------------------------------------------------------------------------------------------
    def coordinate_table(self, positions: Positions) -> Tensor | None:
        """Levels ``(Bt, L, 3)`` from ``positions.coordinates`` or ``positions.token_ids`` (one of them) or None."""
        if positions.token_ids is None:
            return super().coordinate_table(positions)
        if positions.coordinates is not None:
            raise ValueError("hierarchical: give Positions either coordinates (explicit levels) or token_ids (levels "
                             "from the boundary ids), not both.")
        levels = self.levels_of(positions.token_ids)
        return levels.unsqueeze(0) if levels.dim() == 2 else levels

    def levels_of(self, tokens: Tensor) -> Tensor:
        """Levels ``(..., T, 3)`` of token ids ``(T,)`` / ``(B, T)`` with this encoding's boundary ids."""
        if not (self.sentence_end_ids or self.paragraph_end_ids):
            raise ValueError("hierarchical: levels from token ids need boundary ids; build the encoding with "
                             "sentence_end_ids=[...] and/or paragraph_end_ids=[...], or give the levels as "
                             "Positions(coordinates=levels).")
        return hierarchical_levels(tokens, sentence_end_ids=self.sentence_end_ids,
                                   paragraph_end_ids=self.paragraph_end_ids)

    def plain_coordinates(self, pos: Tensor) -> Tensor:
        zero = torch.zeros_like(pos)
        return torch.stack((pos, zero, zero), dim=-1)  # one sentence in one paragraph

    def continue_coordinates(self, table: Tensor, pos: Tensor) -> Tensor:
        last = table[:, -1:, :]  # (Bt, 1, 3): the last sentence goes on
        step = (pos - table.shape[1] + 1).unsqueeze(-1) * torch.tensor([1, 0, 0], device=pos.device)
        return last + step

    # -- hook ----------------------------------------------------------------------------------------------------------
    def level_encodings(self, levels: Tensor) -> Tensor:
        """float ``(..., dim)`` encoding of levels ``(..., 3)`` (float32, or the learned tables' dtype if wider)."""
        parts = []
        for axis, (limit, width) in enumerate(zip(self.limits, self.widths)):
            value = levels[..., axis]
            if self.kind == "sinusoidal":
                parts.append(sinusoidal_table(value, width, base=self.base))
                continue
            if value.numel() and reads_values(value) and int(value.max()) >= limit:
                what = ("max_seq_len", "max_sentences", "max_paragraphs")[axis]
                raise ValueError(f"hierarchical: {LEVELS[axis]} reaches {int(value.max())} but the learned table has "
                                 f"{limit} rows ({what}={limit}); build it with a larger {what} or use "
                                 f"kind='sinusoidal'.")
            table = self.tables[axis]
            parts.append(F.embedding(value, table).to(torch.promote_types(table.dtype, torch.float32)))
        if self.combine == "sum":
            return parts[0] + parts[1] + parts[2]
        return torch.cat(parts, dim=-1)

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        """``x`` ``(B, T, dim)`` plus the encoding at levels ``(B, T, 3)`` or at plain positions ``(T,)``/``(B, T)``."""
        levels = self.resolve(pos, x.shape[-2], batch=x.shape[0], device=x.device, name="pos")  # (B|1, T, 3)
        return x + self.level_encodings(levels).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kind={self.kind!r}, combine={self.combine!r}"
