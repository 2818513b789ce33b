"""How exact is each encoding far from the origin? Errors against a float64 reference, per input dtype.

For every registered encoding, at positions ``p, p + 1, ..., p + T - 1`` with ``p`` in 10^3 .. 10^6 and 2^31, 2^40,
2^53 (past 2^53 float64 cannot even hold every integer):

- the encoding is copied to float64 and run on float64 inputs (the reference), and run at the tested dtype
  (module and inputs cast with ``.to(dtype)``, as a user running a model in that dtype would);
- what is compared is what the encoding produces: ``embed(0, pos)`` for absolute encodings (the encoding itself) and
  ``attention(rotate(q, k), v, pe)`` for everything that acts inside attention (rotations, biases, custom attention);
- the number is the largest absolute error, with q, k, v ~ N(0, 1).

The float64 reference is itself only as good as float64 arithmetic: RoPE and sinusoidal range-reduce their angles
exactly (``posenc._angles``), so their reference is exact at every position and their rows measure the dtype alone
(``tests/test_long_positions.py`` checks them against 60-digit mpmath up to 2^63 - 1). Inside ``torch.compile``
the exact reduction (a host-side step) is skipped and the plain float64 product is used: compiled RoPE/sinusoidal
are exact to ~2e-9 rad below 2^24 and drift as ``p * 1e-16`` rad beyond. For the other encodings the
row compares two runs of the same float64 code: read a flat row there as "no worse than float64 itself". Bias
encodings depend on ``q - k`` only (small integers), so they are exact at any position. The 2-D and multimodal rotary
encodings (``mrope``, ``axial_rope``, ``rope_mixed``, ``sinusoidal_2d``) still form their angles as a plain float64
product of coordinates: past ~2^31 those angles drift (~1e-5 rad at 2^40, meaningless
at 2^53) in the reference as well, so their flat rows there do not mean exactness. ``xpos`` refuses positions far
from its centre.

An input dtype's own rounding sets a floor (bfloat16 keeps 8 bits: ~4e-3 relative; float16 11 bits: ~5e-4); an
error far above that floor at large positions means the encoding loses precision there. ``posenc numerics`` prints
the table; ``docs/numerics.md`` holds the published copy.
"""

from __future__ import annotations

import copy
import math

import torch

from posenc.backends import attention
from posenc.base import get_encoding, registered_names

POSITIONS = (10**3, 10**4, 10**5, 10**6, 2**31, 2**40, 2**53)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DIM, HEADS, LENGTH, MAX_SEQ_LEN = 64, 4, 16, 2048


def _outputs(pe, pos: torch.Tensor, dtype: torch.dtype, q, k, v) -> list[torch.Tensor]:
    pe = copy.deepcopy(pe).to(dtype)
    outs = []
    if pe.uses_embed:
        outs.append(pe.embed(torch.zeros(1, LENGTH, DIM, dtype=dtype), pos).double())
    if pe.uses_rotate or pe.uses_bias or pe.uses_terms:
        qd, kd, vd = q.to(dtype), k.to(dtype), v.to(dtype)
        qd, kd = pe.rotate(qd, kd, pos, pos)
        outs.append(attention(qd, kd, vd, pe, q_pos=pos, k_pos=pos, causal=True, backend="auto").double())
    return outs


@torch.no_grad()
def encoding_errors(name: str, *, positions=POSITIONS, dtypes=DTYPES, seed: int = 0) -> dict[str, dict[int, str]]:
    """``{dtype name: {position: formatted max abs error or the reason there is none}}`` for one encoding."""
    torch.manual_seed(seed)
    pe = get_encoding(name, dim=DIM, n_heads=HEADS, max_seq_len=MAX_SEQ_LEN, causal=True).eval()
    head_dim = DIM // HEADS
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, HEADS, LENGTH, head_dim, generator=g, dtype=torch.float64) for _ in range(3))
    result: dict[str, dict[int, str]] = {}
    for dtype in dtypes:
        row = {}
        for p in positions:
            pos = torch.arange(p, p + LENGTH)
            try:
                ref = _outputs(pe, pos, torch.float64, q, k, v)
                got = _outputs(pe, pos, dtype, q, k, v)
            except ValueError as exc:  # an encoding not defined there says so; the table shows it
                row[p] = "raises" if "max_seq_len" not in str(exc) else "n/a (table)"
                continue
            if not ref:
                row[p] = "no-op"
                continue
            err = max(float((a - b).abs().max()) for a, b in zip(ref, got))
            row[p] = "inf/nan" if not math.isfinite(err) else f"{err:.1e}"
        result[str(dtype).removeprefix("torch.")] = row
    return result


def _label(p: int) -> str:
    return f"1e{round(math.log10(p))}" if 10 ** round(math.log10(p)) == p else f"2^{p.bit_length() - 1}"


def numerics_table(names: list[str] | None = None) -> str:
    """A Markdown table: one row per encoding and dtype, one column per position."""
    names = names or registered_names()
    head = "| encoding | dtype | " + " | ".join(f"pos {_label(p)}" for p in POSITIONS) + " |"
    lines = [head, "|" + "---|" * (2 + len(POSITIONS))]
    for name in names:
        for dtype, row in encoding_errors(name).items():
            lines.append(f"| `{name}` | {dtype} | " + " | ".join(row[p] for p in POSITIONS) + " |")
    return "\n".join(lines)
