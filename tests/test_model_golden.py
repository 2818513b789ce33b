"""Golden logits of a tiny :class:`posenc.Transformer` for every structured encoding, fed its structure input.

``tests/data/model_golden.pt`` was recorded from the code *before* positions became one explicit
:class:`posenc.Positions` object (issue 16), when the structure was set on the encoding with context managers
(``pe.grid(...)``, ``pe.position_ids(...)``, ``pe.levels(...)``, ``pe.tokens(...)``, ``pe.graph(...)``). The test
passes the same structure as ``model(tokens, positions=Positions(...))``: the refactor must keep the numbers. Cases
without structure check each encoding's default (a 1 x T grid, text-only M-RoPE, one sentence, the path graph);
``decode`` cases run a prefill and then one token at a time through a KV cache.

Re-recorded since: ``laplacian|graph`` and ``laplacian|default``, when the Laplacian eigenvectors got a canonical
basis (signs and repeated eigenspaces chosen from the graph, not by the eigensolver: the old numbers held
whichever signs this machine's LAPACK returned), by running this file as a script::

    PYTHONPATH=src python tests/test_model_golden.py --record 'laplacian|graph' 'laplacian|default'

The comparison allows float32 rounding, as another CPU or BLAS build sums in another order: by the forward-error
bound of a sum of ``n`` float32 terms (``|error| <= n u sum|terms|``, ``u = 2**-24``), a logit on another machine
differs by at most ``n u`` times the scale of the terms, with ``n`` the float32 terms summed along the longest chain
from an input to a logit (:data:`CHAIN`, 880 here) and the largest logit as the scale (a norm-wise bound: a small
logit is what is left of larger terms after cancellation, and carries their absolute error). That is ``~5e-5`` of
the largest logit; measured across torch's default / AVX2 / AVX-512 kernels and MKL's COMPATIBLE path: at most
``8e-7`` (13 u). A changed encoding moves logits by orders of magnitude more.
"""

from __future__ import annotations

import argparse
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
DIM, LAYERS, FFN, MAX_T = 32, 2, 4 * 32, 12  # build_model's width, blocks and feed-forward width; the longest case
U = 2.0**-24  # float32 unit roundoff
# float32 terms summed along the longest chain from an input to a logit: per block, two layer norms (mean and
# variance: 2 x DIM each), the q/k/v projection (DIM), a score (head dim DIM / 2), the softmax and the weighted
# values (MAX_T each), the output projection (DIM), the feed-forward (DIM, then FFN); then the final norm and head
CHAIN = LAYERS * (4 * DIM + DIM + DIM // 2 + 2 * MAX_T + DIM + DIM + FFN) + 2 * DIM + DIM


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
    cfg = TransformerConfig(kind=case["kind"], vocab_size=VOCAB, dim=DIM, n_heads=2, n_layers=LAYERS, max_seq_len=16,
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


def logits(name: str) -> torch.Tensor:
    """The case's logits ``(B, T, VOCAB)`` from today's code."""
    case = CASES[name]
    model = build_model(case)
    x, structure = inputs(case)
    return run(model, case, x, positions_for(case, structure))


@pytest.mark.parametrize("name", list(CASES))
def test_model_logits_equal_the_recorded_ones_within_rounding(golden, name):
    want = golden[name]
    atol = CHAIN * U * float(want.abs().max())  # the module docstring derives it
    torch.testing.assert_close(logits(name), want, atol=atol, rtol=0)


def test_every_case_is_recorded(golden):
    assert set(golden) == set(CASES)


def test_the_tolerance_is_well_below_what_a_small_change_moves(golden):
    assert CHAIN == 880 and CHAIN * U < 6e-5
    name = "axial_rope|grid"
    case, want = CASES[name], golden[name]
    x, grid = inputs(case)
    transposed = Positions(coordinates=grid.flip(-1))  # (row, col) read as (col, row): the same tokens and model
    moved = (run(build_model(case), case, x, transposed) - want).abs().max()
    assert moved > 100 * CHAIN * U * want.abs().max()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", nargs="+", metavar="CASE", choices=list(CASES),
                        help=f"re-record these cases in {GOLDEN}, keeping every other case as it is")
    args = parser.parse_args()
    if args.record:
        data = torch.load(GOLDEN, weights_only=True)
        for name in args.record:
            data[name] = logits(name)
        torch.save(data, GOLDEN)
        print(f"re-recorded {', '.join(args.record)} in {GOLDEN}")
