"""Golden logits of a tiny :class:`posenc.Transformer` for every structured encoding, fed its structure input.

``tests/data/model_golden.pt`` was recorded from the code *before* positions became one explicit
:class:`posenc.Positions` object (issue 16), when the structure was set on the encoding with context managers
(``pe.grid(...)``, ``pe.position_ids(...)``, ``pe.levels(...)``, ``pe.tokens(...)``, ``pe.graph(...)``). The test
passes the same structure as ``model(tokens, positions=Positions(...))`` and compares to 1e-5: the refactor must keep
the numbers. Cases without structure check each encoding's default (a 1 x T grid, text-only M-RoPE, one sentence,
the path graph); ``decode`` cases run a prefill and then one token at a time through a KV cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from posenc import Positions, Transformer, TransformerConfig
from posenc.encodings.grid2d import grid_coordinates
from posenc.encodings.hierarchical import hierarchical_levels
from posenc.encodings.mrope import mrope_position_ids
from posenc.model import KVCache

GOLDEN = Path(__file__).parent / "data" / "model_golden.pt"
VOCAB, B = 40, 2


def _graph(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(B, n, n, generator=g) < 0.35).float()
    a = torch.triu(a, 1)
    return a + a.transpose(-1, -2)  # (B, N, N) symmetric, no self loops


def _case(encoding: str, structure: str | None, *, kind: str = "encoder", t: int = 10, decode: int | None = None,
          **options) -> dict:
    return {"encoding": encoding, "structure": structure, "kind": kind, "t": t, "decode": decode, "options": options}


CASES = {
    "sinusoidal_2d|grid": _case("sinusoidal_2d", "grid", t=10),
    "axial_rope|grid": _case("axial_rope", "grid", t=10),
    "rope_mixed|grid": _case("rope_mixed", "grid", t=10),
    "axial_rope|grid|decode": _case("axial_rope", "grid", kind="decoder", t=10, decode=6),
    "mrope|position_ids": _case("mrope", "position_ids", t=10),
    "mrope|position_ids|decode": _case("mrope", "position_ids", kind="decoder", t=12, decode=6),
    "hierarchical|levels": _case("hierarchical", "levels", t=10),
    "hierarchical|tokens": _case("hierarchical", "tokens", t=10, sentence_end_ids=[3], paragraph_end_ids=[4]),
    "laplacian|graph": _case("laplacian", "graph", t=7),
    "rwpe|graph": _case("rwpe", "graph", t=7),
    "spd|graph": _case("spd", "graph", t=7),
    **{f"{name}|default": _case(name, None, t=8) for name in
       ("sinusoidal_2d", "axial_rope", "rope_mixed", "mrope", "hierarchical", "laplacian", "rwpe", "spd")},
}


def build_model(case: dict) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(kind=case["kind"], vocab_size=VOCAB, dim=32, n_heads=2, n_layers=2, max_seq_len=16,
                            encoding=case["encoding"], encoding_options=dict(case["options"]))
    model = Transformer(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # nudge the encoding's parameters so zero or symmetric initialisations matter
        for p in model.pe.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def inputs(case: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids ``(B, T)`` and the structure the case feeds (a table, token ids or an adjacency)."""
    t = case["t"]
    x = torch.randint(5, VOCAB, (B, t), generator=torch.Generator().manual_seed(2))
    kind = case["structure"]
    if kind == "grid":
        return x, grid_coordinates(3, 3, prefix_tokens=1)  # (10, 2): a CLS token then a 3 x 3 grid
    if kind == "position_ids":
        ids = mrope_position_ids([2, (1, 2, 2), t - 6])  # text, a 2 x 2 image, text: (T, 3)
        return x, ids[: case["decode"]] if case["decode"] else ids  # decoding continues past the table as text
    if kind in ("levels", "tokens"):
        x[0, 2] = x[1, 5] = 3  # sentence ends
        x[0, 6] = 4  # a paragraph end
        if kind == "tokens":
            return x, x
        return x, hierarchical_levels(x, sentence_end_ids=[3], paragraph_end_ids=[4])  # (B, T, 3)
    if kind == "graph":
        return x, _graph(t, seed=3)
    return x, None


def positions_for(case: dict, structure: torch.Tensor | None) -> Positions | None:
    kind = case["structure"]
    if kind is None:
        return None
    if kind == "tokens":
        return Positions(token_ids=structure)
    if kind == "graph":
        return Positions(adjacency=structure)
    return Positions(coordinates=structure)


def run(model: Transformer, case: dict, x: torch.Tensor, positions: Positions | None) -> torch.Tensor:
    with torch.no_grad():
        if not case["decode"]:
            return model(x, positions=positions)
        cache = KVCache()
        split = case["decode"]
        parts = [model(x[:, :split], positions=positions, cache=cache)]  # the cache keeps the structure
        parts += [model(x[:, i:i + 1], cache=cache) for i in range(split, x.shape[1])]
        return torch.cat(parts, dim=1)


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN, weights_only=True)


@pytest.mark.parametrize("name", list(CASES))
def test_model_logits_equal_the_recorded_ones(golden, name):
    case = CASES[name]
    model = build_model(case)
    x, structure = inputs(case)
    torch.testing.assert_close(run(model, case, x, positions_for(case, structure)), golden[name],
                               atol=1e-5, rtol=1e-5)


def test_every_case_is_recorded(golden):
    assert set(golden) == set(CASES)
