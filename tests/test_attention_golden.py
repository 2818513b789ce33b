"""Golden outputs of ``posenc.attention``: every registered encoding x backend x causal/bidirectional x GQA.

``tests/data/attention_golden.pt`` was recorded from the code *before* the attention core was refactored into
score terms (issue 16), by running this file as a script::

    PYTHONPATH=src python tests/test_attention_golden.py --record

For each encoding, causal or bidirectional attention, and ``n_kv_heads`` equal to or half of ``n_heads``, it holds the
output, the gradients of ``q``, ``k`` and ``v``, and the gradient of every parameter of the encoding, for each of
``auto``, ``reference``, ``dense`` and ``chunked`` that could compute the call at recording time (at that time the
encodings with their own ``attend`` ran only under ``auto``). The test recomputes every recorded case and compares in
float32 within rounding (below): a refactor must keep the numbers. ``flex`` is left out (on CPU it is forward-only and
compiles for ~30 s per score_mod). Only ``posenc.attention`` is recorded (not ``rotate``/``embed``), with parameters
nudged off their initialisation so zero-initialized tables (CoPE, DAPE's last layer, adaptive's content projection)
matter.

Within rounding: another CPU, BLAS build or torch kernel level (``ATEN_CPU_CAPABILITY``) sums in another order, so
each field is compared with ``atol = CHAIN u |field| + 3 sqrt(2 CHAIN) u S`` (``u = 2**-24``, float32's unit
roundoff), two terms derived from the arithmetic:

- the worst-case forward-error bound of a sum of ``n`` float32 terms, ``|error| <= n u sum|terms|``, with ``n`` the
  float32 terms summed along the longest chain (:data:`CHAIN`: a score sums ``D`` products, the softmax and the
  output ``Tk`` terms each, and a parameter's gradient one term per batch, head, query and key:
  ``8 + 2 * 9 + 2 * 4 * 6 * 9 = 458``) and the field's largest entry ``|field|`` as the scale of its terms (a
  norm-wise bound: a small entry is what cancellation left of larger terms, and carries their absolute error);
- a floor for fields that cancel far below their terms, down to exact zero -- e.g. the gradient of an MLP's last
  bias that adds the same amount to every score of a softmax row, which softmax ignores (DAPE, FIRE, dynamic,
  adaptive): their terms are on the scale ``S`` of the case (the largest entry of any of its fields), and rounding
  errors of many operations add like a random walk (standard deviation ``sqrt(n) u S`` per machine), so two
  machines differ by ``sqrt(2 n) u S`` typically; we allow three times that.

Measured across torch's default / AVX2 / AVX-512 kernels and MKL's native / COMPATIBLE / AVX2 paths on an AVX-512
Xeon: every difference is below 0.09 ``atol``. Two keys trading positions under ALiBi move the numbers by more
than 100 ``atol`` (:func:`test_the_tolerance_is_well_below_what_a_small_change_moves`).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
from pathlib import Path

import pytest
import torch

import posenc
from layer_inputs import layer_kwargs

GOLDEN = Path(__file__).parent / "data" / "attention_golden.pt"
B, H, D, TQ, TK, MAX_SEQ_LEN = 2, 4, 8, 6, 9, 16
BACKENDS = ("auto", "reference", "dense", "chunked")
U = 2.0**-24  # float32 unit roundoff
CHAIN = D + 2 * TK + B * H * TQ * TK  # float32 terms summed along the longest chain (module docstring)
CASES = [(causal, hkv) for causal in (True, False) for hkv in (H, H // 2)]


def _key(name: str, backend: str, causal: bool, hkv: int) -> str:
    return f"{name}|{backend}|{'causal' if causal else 'bidirectional'}|hkv={hkv}"


def _encoding(name: str, causal: bool) -> posenc.PositionalEncoding:
    torch.manual_seed(0)  # constructors draw their initial parameters from the global generator
    pe = posenc.get_encoding(name, dim=H * D, n_heads=H, max_seq_len=MAX_SEQ_LEN, causal=causal)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pe.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return pe.eval()


def _inputs(hkv: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {
        "q": torch.randn(B, H, TQ, D, generator=g),  # (B, H, Tq, D)
        "k": torch.randn(B, hkv, TK, D, generator=g),  # (B, Hkv, Tk, D)
        "v": torch.randn(B, hkv, TK, D, generator=g),
        "grad_out": torch.randn(B, H, TQ, D, generator=g),
        # (B, Tk): the first sequence starts at an offset, the second restarts (a packed second document)
        "k_pos": torch.tensor([[2, 3, 4, 5, 6, 7, 8, 9, 10], [0, 1, 2, 3, 4, 0, 1, 2, 3]]),
    }


def _run(pe: posenc.PositionalEncoding, backend: str, causal: bool, hkv: int,
         inputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    x = _inputs(hkv) if inputs is None else inputs
    q, k, v = (x[n].clone().requires_grad_(True) for n in ("q", "k", "v"))
    k_pos = x["k_pos"]
    layer = layer_kwargs(pe, batch=B, keys=TK, kv_heads=hkv, k_pos=k_pos)  # features/layer of encodings reading it
    out = posenc.attention(q, k, v, pe, q_pos=k_pos[:, TK - TQ:], k_pos=k_pos, causal=causal, backend=backend,
                           **layer)
    pe.zero_grad(set_to_none=True)
    out.backward(x["grad_out"])
    result = {"out": out.detach(), "grad_q": q.grad, "grad_k": k.grad, "grad_v": v.grad}
    for pname, p in pe.named_parameters():
        if p.grad is not None:
            result[f"grad:{pname}"] = p.grad.detach().clone()
    return result


def record(path: Path = GOLDEN, *, only_missing: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Run every case each backend can compute today and save the results to ``path``.

    ``only_missing``: keep every recorded case as it is and add the encodings the file does not cover yet (a new
    encoding joins the goldens without re-recording the others).
    """
    attn_mod = importlib.import_module("posenc.attention_settings")
    attn_mod.CHUNK_ELEMENTS = 1  # chunked then uses its smallest blocks (16 rows: one block at these sizes)
    golden: dict[str, dict[str, torch.Tensor]] = dict(_golden()) if only_missing else {}
    covered = {key.split("|")[0] for key in golden}
    for name in posenc.registered_names():
        if name in covered:
            continue
        for causal, hkv in CASES:
            for backend in BACKENDS:
                pe = _encoding(name, causal)
                try:
                    golden[_key(name, backend, causal, hkv)] = _run(pe, backend, causal, hkv)
                except ValueError as exc:  # this backend cannot compute this call (today)
                    print(f"skip {_key(name, backend, causal, hkv)}: {str(exc).splitlines()[0][:100]}")
    # Many cases share results bit for bit (every encoding that acts outside attention gives plain attention), so
    # each distinct tensor is stored once and the cases refer to it by index: the file stays well under 2 MB.
    tensors: list[torch.Tensor] = []
    index: dict[tuple, int] = {}
    cases: dict[str, dict[str, int]] = {}
    for key, fields in golden.items():
        cases[key] = {}
        for field, t in fields.items():
            ident = (tuple(t.shape), t.numpy().tobytes())
            if ident not in index:
                index[ident] = len(tensors)
                tensors.append(t.contiguous())
            cases[key][field] = index[ident]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"tensors": tensors, "cases": cases}, path)
    return golden


@functools.cache
def _golden() -> dict[str, dict[str, torch.Tensor]]:
    data = torch.load(GOLDEN, weights_only=True)
    return {key: {field: data["tensors"][i] for field, i in fields.items()} for key, fields in data["cases"].items()}


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(importlib.import_module("posenc.attention_settings"), "CHUNK_ELEMENTS", 1)


def test_golden_file_covers_every_encoding_and_case():
    keys = set(_golden())
    for name in posenc.registered_names():
        for causal, hkv in CASES:
            assert _key(name, "auto", causal, hkv) in keys, f"no golden output for {name}; re-record"


def tolerances(want: dict[str, torch.Tensor]) -> dict[str, float]:
    """``atol`` per field of a recorded case: its rounding bound plus the case's cancellation floor (docstring)."""
    floor = 3 * math.sqrt(2 * CHAIN) * U * max(float(t.abs().max()) for t in want.values())
    return {field: CHAIN * U * float(t.abs().max()) + floor for field, t in want.items()}


@pytest.mark.parametrize("name", posenc.registered_names())
def test_outputs_and_gradients_equal_the_golden_ones(name, small_chunks):
    golden = _golden()
    checked = 0
    for causal, hkv in CASES:
        for backend in BACKENDS:
            key = _key(name, backend, causal, hkv)
            if key not in golden:
                continue
            got = _run(_encoding(name, causal), backend, causal, hkv)
            want = golden[key]
            assert sorted(got) == sorted(want), f"{key}: different gradients present"
            for field, atol in tolerances(want).items():
                torch.testing.assert_close(got[field], want[field], atol=atol, rtol=0,
                                           msg=lambda m, key=key, field=field: f"{key} {field}: {m}")
            checked += 1
    assert checked > 0


def test_the_tolerance_is_well_below_what_a_small_change_moves():
    assert CHAIN == 458
    want = _golden()[_key("alibi", "reference", True, H)]
    x = _inputs(H)
    x["k_pos"] = x["k_pos"].clone()
    x["k_pos"][0, [0, 1]] = x["k_pos"][0, [1, 0]]  # two keys trade positions: their ALiBi biases change
    got = _run(_encoding("alibi", True), "reference", True, H, x)
    atol = tolerances(want)
    assert all((got[f] - want[f]).abs().max() > 100 * atol[f] for f in want)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help=f"(re)write {GOLDEN}")
    parser.add_argument("--record-missing", action="store_true", help=f"add the encodings {GOLDEN} lacks")
    args = parser.parse_args()
    if args.record or args.record_missing:
        data = record(only_missing=args.record_missing)
        print(f"wrote {len(data)} cases to {GOLDEN} ({GOLDEN.stat().st_size / 2**20:.2f} MiB)")
