"""Blind diagnosis: estimate what a candidate RoPE computes from its own outputs, then say how it differs.

The named hypotheses of :func:`~posenc.testing.rope.rope_hypotheses` are the fast path; they only cover mistakes
someone listed (base 10000 instead of the configured one, an offset of exactly one, ...). When none of them explains
the numbers, :func:`estimate_rope` measures the candidate instead:

1. **The linear map per position.** RoPE is linear in q (and in k) at each position, so feeding the identity -- head
   ``h`` of the probe holds the unit vector ``e_h`` at every position -- returns the whole ``(D, D)`` matrix ``M_t``
   of every probe position ``t`` in one call (``out[0, h, t, :]`` is column ``h`` of ``M_t``). A random input checks
   that the map really is linear, and a ``(B, T)`` call checks that a row does not depend on the other rows.
2. **The pairs.** Channel ``j`` rotates with the one channel ``i`` where ``M_t[i, j]`` is not zero for some ``t``;
   a channel with no partner passes through. The pairs name the layout (half ``(x[i], x[i + r/2])``, interleaved
   ``(x[2i], x[2i + 1])`` or neither) and the rotated width.
3. **Angles, frequencies, offset, scale.** For a pair ``(a, b)``, ``a < b``, the column ``a`` of a scaled rotation
   is ``s (cos θ, sin θ)``: ``θ_t = atan2(M_t[b, a], M_t[a, a])`` and ``s = hypot(...)``. The frequency is the angle
   per position step, unwrapped over the positions 1, 2, 4, ..., 32768 (each doubling predicts the next angle to
   well within ``π``); the offset ``c`` solves ``θ_0 = ω c`` on a slow pair; ``s`` is the output scale (attention
   factor, mscale) of q and of k separately.
4. **Angle dtype.** Angles formed in bfloat16 / float16 round ``p`` and ``ω`` before multiplying; at positions such
   as 1000, 4097 and 30001 (not powers of two) the model ``dt(dt(p + c) * dt(ω))`` fits one dtype best.

The same estimator runs on posenc's float64 reference for the configuration, and :func:`explain_rope` words the
differences with the measured numbers ("your frequencies are those of base 500000: the configuration says
10000"). It says so when the estimate cannot describe the candidate (not linear, channels that mix with several
others, frequencies that are no geometric series where the configuration's are, a row that depends on the batch).
Shapes: the probe q and k are ``(1, D, T, D)`` float32 (``D`` heads of head_dim ``D``), positions int64 ``(T,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["PROBE_POSITIONS", "RopeEstimate", "estimate_rope", "explain_alibi", "explain_rope", "explain_t5"]

# 0..8 (exact in every dtype), the doubling chain to 2^15 (exact in bfloat16/float16: p * dt(ω) is then exact too, so
# the chain measures dt(ω) itself) and three positions that round differently in each dtype. 2^15 stays below
# float16's largest finite value (65504).
PROBE_POSITIONS = sorted({*range(9), *(2 ** e for e in range(4, 16)), 1000, 4097, 30001})
_CHAIN = [1, *(2 ** e for e in range(1, 16))]
_HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# A pair whose angle never exceeds this (radians, over the probe) cannot be told from a channel that passes through.
_ROTATES = 1e-3


@dataclass
class SideEstimate:
    """What one of q / k goes through: ``pairs`` ``[(a, b), ...]`` (a < b, ordered by a), ``freqs`` (radians per
    position step, one per pair), ``scales`` (per pair, the median over positions), ``passthrough`` channels and their
    scale, the ``offset`` added to positions, and ``problem`` (why the estimate cannot describe it) or ``None``."""

    pairs: list[tuple[int, int]] = field(default_factory=list)
    freqs: list[float] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    scale_varies: bool = False  # the scale changes with the position (log-n scaling)
    passthrough: list[int] = field(default_factory=list)
    passthrough_scale: float = 1.0
    offset: float = 0.0
    phase: float = 0.0  # radians added to every angle (cos and sin swapped: 90° with the direction reversed)
    angle_dtype: str = "float64"
    problem: str | None = None


@dataclass
class RopeEstimate:
    """The estimate for q and k, and a problem that spoils both (``None`` when the probe ran cleanly)."""

    q: SideEstimate
    k: SideEstimate
    problem: str | None = None
    batch: str | None = None  # how a row of (B, T) positions depends on the other rows, or None

    def to_dict(self) -> dict:
        def side(s: SideEstimate) -> dict:
            return {"pairs": s.pairs, "freqs": s.freqs, "scales": s.scales, "passthrough": s.passthrough,
                    "offset": s.offset, "phase": s.phase, "angle_dtype": s.angle_dtype, "problem": s.problem}
        return {"q": side(self.q), "k": side(self.k), "problem": self.problem, "batch": self.batch}


def _wrap(x: Tensor) -> Tensor:
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def _side(M: Tensor, positions: list[int]) -> SideEstimate:
    """Estimate from the maps ``M`` ``(T, D, D)`` float64 (``M[t]`` maps an input vector to the output)."""
    T, D, _ = M.shape
    est = SideEstimate()
    size = float(M.abs().max())
    if not math.isfinite(size) or size == 0:
        est.problem = "its outputs on the probe are zero, infinite or NaN"
        return est
    off = M.abs().amax(0) / size  # (D, D): how much input j ever reaches output i
    off.fill_diagonal_(0.0)
    partner = {}
    for j in range(D):
        mates = [int(i) for i in torch.nonzero(off[:, j] > _ROTATES * 0.5).flatten()]
        if len(mates) > 1:
            est.problem = (f"channel {j} mixes with channels {mates[:6]}: not a rotation of channel pairs (a "
                           f"projection or a mixing layer is applied)")
            return est
        partner[j] = mates[0] if mates else None
    for j, i in partner.items():
        if i is not None and partner.get(i) != j:
            est.problem = f"channel {j} reaches channel {i} but not the other way: not a rotation of channel pairs"
            return est
    est.pairs = sorted({(min(j, i), max(j, i)) for j, i in partner.items() if i is not None})
    est.passthrough = [j for j, i in partner.items() if i is None]
    if est.passthrough:
        diag = torch.stack([M[:, j, j] for j in est.passthrough])  # (P, T)
        est.passthrough_scale = float(diag.median())
    pos = torch.tensor(positions, dtype=torch.float64)
    index = {p: t for t, p in enumerate(positions)}
    thetas = []
    for a, b in est.pairs:
        c, s = M[:, a, a], M[:, b, a]  # column a: s * (cos θ, sin θ)
        if not (torch.allclose(M[:, b, b], c, atol=1e-4 * size) and torch.allclose(M[:, a, b], -s, atol=1e-4 * size)):
            est.problem = (f"channels ({a}, {b}) do not turn as a rotation (cos on both, -sin / +sin off the "
                           f"diagonal): cos and sin swapped, or the two channels scaled differently")
            return est
        theta = torch.atan2(s, c)
        scale = torch.hypot(s, c)
        est.scales.append(float(scale.median()))
        est.scale_varies |= bool((scale.max() - scale.min()) > 1e-4 * scale.median())
        # frequency: unwrap the angle difference to position 0 along the doubling chain
        omega = float(_wrap(theta[index[1]] - theta[index[0]]))
        for p in _CHAIN[1:]:
            d = float(_wrap(theta[index[p]] - theta[index[0]]))
            n = round((omega * p - d) / (2 * math.pi))
            omega = (d + 2 * math.pi * n) / p
        est.freqs.append(omega)
        thetas.append(theta)
    if not est.pairs:
        return est
    theta = torch.stack(thetas)  # (F, T)
    freqs = torch.tensor(est.freqs, dtype=torch.float64)
    # offset: on the slowest pair that still turns by > 1e-4 rad per step, θ_0 = ω c without wrapping for |c| < 3e4
    usable = [i for i, w in enumerate(est.freqs) if abs(w) > 1e-4]
    theta0 = theta[:, index[0]]  # (F,)
    # an integer offset: the one in +-4096 that explains θ_0 = ω c on every pair at once (a single slow pair would
    # wrap once |ω c| > π); else a fractional one from the slowest pair that still turns
    grid = torch.arange(-4096, 4097, dtype=torch.float64)
    misfit = _wrap(theta0[:, None] - freqs[:, None] * grid[None, :]).abs().amax(0)  # (C,)
    best = int(torch.argmin(misfit + 1e-9 * grid.abs()))  # ties: the smallest |c|
    if float(misfit[best]) <= 1e-3:
        est.offset = float(grid[best])
    elif usable:
        slow = min(usable, key=lambda i: abs(est.freqs[i]))
        c = float(theta0[slow]) / est.freqs[slow]
        est.offset = float(round(c)) if abs(c - round(c)) < 0.05 else c
    # the angle at position 0 is either ω c (an offset: proportional to the frequency) or one phase φ for every pair
    # (cos and sin swapped give φ = 90° with the direction reversed); keep the model that fits
    by_offset = float(_wrap(theta0 - freqs * est.offset).abs().max())
    phase = float(torch.atan2(theta0.sin().mean(), theta0.cos().mean()))
    by_phase = float(_wrap(theta0 - phase).abs().max())
    if by_phase < by_offset and by_phase <= 1e-3:
        est.offset, est.phase = 0.0, phase
    elif by_offset > 1e-3:
        est.problem = (f"the angles at position 0 are neither proportional to the frequencies (an offset) nor one "
                       f"phase for every pair (residuals {by_offset:.3g} and {by_phase:.3g} rad)")
        return est
    est.angle_dtype = _angle_dtype(theta - est.phase, freqs, pos + est.offset)
    return est


def _angle_dtype(theta: Tensor, freqs: Tensor, pos: Tensor) -> str:
    """The dtype whose rounding of ``p * ω`` fits the measured angles best (float64 unless a half dtype fits much
    better: float32 angles are a precision limit, not a bug, and are not told apart here)."""
    def residual(dt: torch.dtype) -> float:
        pred = (pos.to(dt)[None, :] * freqs.to(dt)[:, None]).to(torch.float64)  # (F, T)
        return float(_wrap(theta - pred).abs().max())

    exact = residual(torch.float64)
    best, best_res = "float64", exact
    for name, dt in _HALF.items():
        r = residual(dt)
        if r < 0.25 * best_res and exact > 1e-3:
            best, best_res = name, r
    return best


def _maps(out: Tensor) -> Tensor:
    """``(1, D, T, D)`` outputs of the identity probe -> ``(T, D, D)`` maps: ``M[t, i, j] = out[0, j, t, i]``."""
    return out[0].to(torch.float64).permute(1, 2, 0)


def estimate_rope(fn: Callable, head_dim: int, *, reference: bool = False) -> RopeEstimate:
    """Estimate what ``fn(q, k, positions) -> (q, k)`` computes (see the module docstring).

    Args:
        fn: the candidate; called with float32 q and k ``(1, D, T, D)`` (``reference=True``: float64, for posenc's
            own reference) and int64 positions ``(T,)`` / ``(2, T)``.
        head_dim: ``D``.
    """
    D = head_dim
    dt = torch.float64 if reference else torch.float32
    pos = torch.tensor(PROBE_POSITIONS, dtype=torch.int64)
    T = pos.numel()
    eye = torch.eye(D, dtype=dt)[None, :, None, :].expand(1, D, T, D).contiguous()  # (1, D, T, D): head h = e_h
    empty = SideEstimate()
    try:
        with torch.no_grad():
            q_out, k_out = fn(eye.clone(), eye.clone(), pos.clone())
            g = torch.Generator().manual_seed(0)
            x = torch.randn(1, 2, T, D, generator=g, dtype=torch.float64).to(dt)  # (1, 2, T, D)
            xq, xk = fn(x.clone(), x.clone(), pos.clone())
            rows = torch.stack((pos, pos + 3))  # (2, T): two rows, different positions
            x2 = x.expand(2, -1, -1, -1).contiguous()  # (2, 2, T, D)
            bq, _ = fn(x2.clone(), x2.clone(), rows)
            sq, _ = fn(x.clone(), x.clone(), pos + 3)
    except Exception as exc:  # noqa: BLE001 - a candidate that cannot run the probe: nothing to estimate
        return RopeEstimate(empty, empty, f"it raised on the estimate's probe ({type(exc).__name__}: "
                                          f"{str(exc).splitlines()[0] if str(exc) else ''})")
    shapes = ((q_out, eye), (k_out, eye), (xq, x), (bq, x2), (sq, x))
    if not all(isinstance(got, Tensor) and got.shape == want.shape for got, want in shapes):
        return RopeEstimate(empty, empty, "it returned something other than (q, k) tensors of the input shapes on the "
                                          "estimate's probe")
    Mq, Mk = _maps(q_out), _maps(k_out)
    lin = torch.einsum("tij,bhtj->bhti", Mq, x.to(torch.float64))
    size = float(lin.abs().max())
    problem = None
    if not float((xq.to(torch.float64) - lin).abs().max()) <= 1e-4 * size + 1e-30:
        problem = ("its output is not a linear map of q at each position (or it depends on the number of heads): "
                   "rotating a sum is not the sum of the rotations")
    batch = None
    tol = 1e-4 * float(sq.abs().max().to(torch.float64)) + 1e-30
    if float((bq[1] - sq[0]).abs().max().to(torch.float64)) > tol:
        if float((bq[1] - xq[0]).abs().max().to(torch.float64)) <= tol:
            batch = "with (B, T) positions every row is rotated at row 0's positions (positions[0] used for all rows)"
        else:
            batch = "a row's output depends on the other rows of the batch (its positions or its values)"
    return RopeEstimate(_side(Mq, PROBE_POSITIONS), _side(Mk, PROBE_POSITIONS), problem, batch)


# -- the words ---------------------------------------------------------------------------------------------------------
_PAIRS = {"half": "(x[i], x[i + r/2])", "interleaved": "(x[2i], x[2i + 1])"}


def _ranges(items: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0–2, 5"``."""
    out, run = [], []
    for i in sorted(items):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else f"{run[0]}")
        run = [i]
    if run:
        out.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else f"{run[0]}")
    return ", ".join(out)


def _layout(pairs: list[tuple[int, int]]) -> tuple[str, int, int]:
    """``(kind, first channel, rotated width)``: kind ``"half"``, ``"interleaved"`` or ``"other"``."""
    if not pairs:
        return "none", 0, 0
    n, start = len(pairs), pairs[0][0]
    firsts = [a for a, _ in pairs]
    if all(b - a == n for a, b in pairs) and firsts == list(range(start, start + n)):
        return "half", start, 2 * n
    if all(b - a == 1 for a, b in pairs) and firsts == list(range(start, start + 2 * n, 2)):
        return "interleaved", start, 2 * n
    return "other", start, 2 * n


def _geometric(freqs: list[float], tol: float = 1e-4) -> tuple[float, float] | None:
    """``(ω_0, ρ)`` when ``|ω_i| = ω_0 ρ^i`` fits to ``tol`` in log, else ``None`` (also for fewer than 3 pairs)."""
    if len(freqs) < 3 or any(w == 0 for w in freqs):
        return None
    y = torch.tensor([math.log(abs(w)) for w in freqs], dtype=torch.float64)
    i = torch.arange(len(freqs), dtype=torch.float64)
    slope = float(((i - i.mean()) * (y - y.mean())).sum() / ((i - i.mean()) ** 2).sum())
    icpt = float(y.mean() - slope * i.mean())
    if float((y - (icpt + slope * i)).abs().max()) > tol:
        return None
    return math.exp(icpt), math.exp(slope)


def _freq_words(c: SideEstimate, r: SideEstimate, base: float, rope_type: str) -> list[str]:
    n = min(len(c.freqs), len(r.freqs))
    if not n:
        return []
    fc = torch.tensor(c.freqs[:n], dtype=torch.float64)
    fr = torch.tensor(r.freqs[:n], dtype=torch.float64)
    if c.angle_dtype in _HALF and r.angle_dtype not in _HALF:  # compare with what that dtype makes of them
        fr = fr.to(_HALF[c.angle_dtype]).to(torch.float64)
    out = []
    flipped = bool(((fc + fr).abs() <= 2e-5 * fr.abs() + 1e-7).all()) and bool((fr.abs() > 1e-7).any())
    if flipped:
        out.append("every pair rotates the other way (angle -p * theta: sin with the wrong sign)")
        fc = -fc
    bad = ((fc - fr).abs() > 2e-5 * fr.abs() + 1e-7).nonzero().flatten().tolist()
    if not bad:
        return out
    ratio = fc / torch.where(fr == 0, torch.ones_like(fr), fr)
    if float(ratio.max() - ratio.min()) <= 1e-4 * float(ratio.abs().mean()):
        k = float(ratio.mean())
        out.append(f"all your frequencies are {k:.6g} times the configuration's (positions effectively divided by "
                   f"{1 / k:.6g}: a linear scaling the configuration does not ask for)")
        return out
    # half-precision angles round each frequency to 2^-8 (bfloat16) / 2^-11 (float16): fit to that, say "about"
    rough = {"bfloat16": 2.0 ** -7, "float16": 2.0 ** -10}.get(c.angle_dtype)
    mine = _geometric(fc.tolist() + [abs(w) for w in c.freqs[n:]], rough or 1e-4)
    theirs = _geometric(r.freqs)
    if mine is not None:
        w0, rho = mine
        mine_base = rho ** (-len(c.freqs))  # ω_i = base^(-2i/w) over the candidate's own rotated width w
        words = (f"your frequencies are those of base about {mine_base:.3g} (as far as {c.angle_dtype} angles show)"
                 if rough else f"your frequencies are those of base {mine_base:.6g}")
        if abs(w0 - 1) > (rough or 1e-4):
            words += f", all divided by {1 / w0:.6g}"
        if theirs is not None and abs(theirs[0] - 1) <= 1e-4:
            words += f": the configuration says {base:g}"
            d_f = 2 * math.log(base) / -math.log(rho) if rho < 1 else 0.0
            if d_f and abs(d_f - round(d_f)) < 0.02 and round(d_f) != 2 * len(c.freqs):
                words += (f" (that is base {base:g} with the exponent over d = {round(d_f)}: base^(-2i/{round(d_f)}), "
                          f"where the rotary dimension is {2 * len(c.freqs)})")
        else:
            words += (f": a plain geometric series, where the configuration's {rope_type!r} frequencies (base "
                      f"{base:g}) are not one, so its scaling is not applied as configured")
        out.append(words)
        return out
    where = "all pairs" if len(bad) == n else f"pair(s) {_ranges(bad)}"
    sel = ratio[bad]
    out.append(f"the frequencies of {where} differ from the configuration's (yours / its = {float(sel.min()):.4g}"
               f" .. {float(sel.max()):.4g}; first at pair {bad[0]}: {float(fc[bad[0]]):.6g} rad per position where "
               f"it is {float(fr[bad[0]]):.6g})" + ("" if len(bad) == n else f"; the other {n - len(bad)} match"))
    if theirs is not None and len(bad) == n:
        out.append("your frequencies are not a geometric series, so no base explains them")
    return out


def _side_words(c: SideEstimate, r: SideEstimate, head_dim: int, base: float, rope_type: str) -> list[str]:
    out = []
    kc, sc, wc = _layout(c.pairs)
    kr, sr, wr = _layout(r.pairs)
    if wc != wr:
        if wc < wr and kc == kr and sc == sr:
            out.append(f"pairs {wc // 2}–{wr // 2 - 1} are not rotated (channels {_ranges(c.passthrough)} pass "
                       f"through): rotary_dim {wc} where the configuration implies {wr}")
        else:
            out.append(f"{wc} channels rotate ({_ranges([x for p in c.pairs for x in p])}): rotary_dim {wc} where "
                       f"the configuration implies {wr} ({_ranges([x for p in r.pairs for x in p])})")
    elif sc != sr and kc == kr:
        out.append(f"channels {sc}–{sc + wc - 1} rotate; the configuration rotates {sr}–{sr + wr - 1}")
    if kc != kr:
        if kc == "other":
            shown = ", ".join(f"({a}, {b})" for a, b in c.pairs[:3])
            out.append(f"your channels pair as {shown}, ..., {c.pairs[-1]}: neither half nor interleaved pairs; the "
                       f"configuration expects {kr} pairs {_PAIRS.get(kr, '')}")
        else:
            out.append(f"your pairs are {kc} {_PAIRS.get(kc, '')}; the configuration expects {kr} pairs "
                       f"{_PAIRS.get(kr, '')}")
    out += _freq_words(c, r, base, rope_type)
    if c.freqs and abs(c.offset - r.offset) > 1e-3:
        shift = c.offset - r.offset
        out.append(f"positions are shifted by {shift:+.6g} (position p is rotated as p {shift:+.6g})")
    if abs(_wrap(torch.tensor(c.phase - r.phase))) > 1e-3:
        deg = math.degrees(float(_wrap(torch.tensor(c.phase - r.phase))))
        swapped = " (cos and sin swapped: a 90° phase with the direction reversed)" if abs(abs(deg) - 90) < 0.1 \
            else ""
        out.append(f"every angle carries a constant phase of {deg:+.4g}°{swapped}")
    if c.angle_dtype != r.angle_dtype and c.angle_dtype in _HALF:
        out.append(f"your angles are formed in {c.angle_dtype} (p and the frequencies rounded to {c.angle_dtype} "
                   f"before multiplying)")
    if c.scale_varies != r.scale_varies:
        out.append("your scale changes with the position (log-n scaling)" if c.scale_varies else
                   "your scale does not change with the position; the configuration's log-n scaling does")
    if c.passthrough and abs(c.passthrough_scale - r.passthrough_scale) > 1e-4:
        out.append(f"the channels that pass through are scaled by {c.passthrough_scale:.6g} (expected "
                   f"{r.passthrough_scale:.6g})")
    return out


def _scale(s: SideEstimate) -> float:
    return float(torch.tensor(s.scales).median()) if s.scales else 1.0


def explain_rope(fn: Callable, spec) -> tuple[list[str], RopeEstimate]:
    """The differences between what ``fn`` computes and what ``spec`` (a :class:`~posenc.testing.rope.RopeSpec`)
    asks for, each a phrase with the measured value; ``[]`` when the estimate finds none. A phrase starting
    ``"the estimate cannot describe"`` means the candidate is not a rotation of channel pairs as measured."""
    from posenc.testing.rope import reference_rope

    cand = estimate_rope(fn, spec.head_dim)
    ref = estimate_rope(lambda q, k, p: reference_rope(q, k, p, spec), spec.head_dim, reference=True)
    problems = [x for x in (cand.problem, cand.q.problem, cand.k.problem) if x]
    if problems:
        words = [f"the estimate cannot describe your implementation: {problems[0]}"]
        return words + ([cand.batch] if cand.batch else []), cand
    words_q = _side_words(cand.q, ref.q, spec.head_dim, spec.base, spec.rope_type)
    words_k = _side_words(cand.k, ref.k, spec.head_dim, spec.base, spec.rope_type)
    words = [w for w in words_q if w in words_k]
    words += [f"{w} (q only)" for w in words_q if w not in words_k]
    words += [f"{w} (k only)" for w in words_k if w not in words_q]
    rq, rk = _scale(cand.q) / _scale(ref.q), _scale(cand.k) / _scale(ref.k)
    off_q, off_k = abs(rq - 1) > 1e-3, abs(rk - 1) > 1e-3
    if off_q and off_k and abs(rq - rk) <= 1e-3 * rq:
        words.append(f"cos/sin scaled by {rq:.4g} on q and k (q and k carry {_scale(cand.q):.4g}, the configuration "
                     f"implies {_scale(ref.q):.4g})")
    elif off_q or off_k:
        for name, off, ratio, c, r in (("q", off_q, rq, cand.q, ref.q), ("k", off_k, rk, cand.k, ref.k)):
            if off:
                words.append(f"cos/sin scaled by {ratio:.4g} on {name}{' only' if not (off_q and off_k) else ''} "
                             f"({name} carries {_scale(c):.4g}, the configuration implies {_scale(r):.4g})")
    if cand.batch:
        words.append(cand.batch)
    return words, cand


# -- biases ----------------------------------------------------------------------------------------------------------
def _line(dist: Tensor, values: Tensor) -> tuple[float, float, float]:
    """Least squares ``values = a + b * dist``: ``(a, b, largest residual)``."""
    x, y = dist.to(torch.float64), values.to(torch.float64)
    b = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum().clamp_min(1e-300))
    a = float(y.mean() - b * x.mean())
    return a, b, float((y - (a + b * x)).abs().max())


def explain_alibi(fn: Callable, slopes: Tensor, *, causal: bool, symmetric: bool) -> list[str]:
    """What a candidate ALiBi ``fn(q_pos, k_pos) -> (H, Tq, Tk)`` computes, against ``slopes`` ``(H,)``: per head the
    slope of the bias over the distance ``i - j`` for keys before the query (and after it, when not causal), the bias
    at distance 0, the sign and the symmetry; phrases with the measured values, ``[]`` when all agree."""
    n = slopes.numel()
    pos = torch.arange(64)
    try:
        with torch.no_grad():
            bias = fn(pos.clone(), pos.clone()).to(torch.float64)  # (H, 64, 64)
    except Exception as exc:  # noqa: BLE001 - nothing to estimate from
        return [f"the estimate cannot describe your bias: it raised on its probe ({type(exc).__name__})"]
    if tuple(bias.shape) != (n, 64, 64) or not torch.isfinite(bias).all():
        return ["the estimate cannot describe your bias: its probe output has the wrong shape or is not finite"]
    i, j = torch.meshgrid(pos, pos, indexing="ij")
    before, after = j <= i, j > i
    out, lo, hi, zero = [], [], [], []
    rough = 0.0  # the largest relative residual that half-precision rounding of the bias explains
    for h in range(n):
        a, b, res = _line((i - j)[before], bias[h][before])
        size = max(1.0, float(bias[h][before].abs().max()))
        if res > 1e-4 * size:
            if res > 2.0 ** -7 * size:
                return [f"the estimate cannot describe your bias: head {h}'s bias for keys before the query is not a "
                        f"straight line in the distance (largest residual {res:.3g}): not ALiBi's -m * (i - j)"]
            rough = max(rough, res / size)
        lo.append(-b)
        zero.append(a)
        if not causal:
            a2, b2, res2 = _line((j - i)[after], bias[h][after])
            hi.append(-b2 if res2 <= 1e-4 * max(1.0, float(bias[h][after].abs().max())) else math.nan)
    got, want = torch.tensor(lo, dtype=torch.float64), slopes.to(torch.float64)
    tol = 1e-5 * float(want.abs().max())
    if rough:
        out.append(f"your bias is rounded to half precision (bfloat16-like: it leaves a straight line by up to "
                   f"{rough:.2g} of its size at distances below 64; the error grows with the position, since m * j is "
                   f"rounded at the absolute position j)")
        tol = 2.0 ** -7 * float(want.abs().max())  # slopes compared to the rounding the bias itself shows
    if bool(((got + want).abs() <= tol).all()):
        out.append("your bias has the wrong sign: it grows with the distance (+m * (i - j)) instead of falling")
        got = -got
    bad = ((got - want).abs() > tol).nonzero().flatten().tolist()
    if bad:
        ratio = got / want
        if float(ratio.max() - ratio.min()) <= 1e-4 * float(ratio.abs().mean()):
            out.append(f"all your slopes are {float(ratio.mean()):.6g} times the configuration's (head 0: "
                       f"{float(got[0]):.6g} where it is {float(want[0]):.6g})")
        elif _is_permutation(want.tolist(), got.tolist(), tol):
            order = [int(torch.argmin((want - g).abs())) for g in got.tolist()]
            out.append(f"your slopes are the configuration's in another head order: head h gets the slope of head "
                       f"{order}")
        else:
            logs = [-math.log2(g) for g in got.tolist() if g > 0]
            step = _line(torch.arange(len(logs)), torch.tensor(logs))[1] if len(logs) == n and n > 2 else None
            what = ""
            if step is not None and _line(torch.arange(n), torch.tensor(logs))[2] < 1e-4:
                first = logs[0]
                what = f" (yours are a geometric series 2^-({first:.4g} + {step:.4g} h))"
            out.append(f"the slopes of head(s) {_ranges(bad)} differ from the configuration's{what}; first head "
                       f"{bad[0]}: {float(got[bad[0]]):.6g} where it is {float(want[bad[0]]):.6g}")
    z = torch.tensor(zero, dtype=torch.float64)
    if bool((z.abs() > tol * 64).any()):
        own = torch.tensor(lo, dtype=torch.float64)  # the candidate's own slopes, sign included: a = m * shift
        shift = z / torch.where(own == 0, torch.ones_like(own), own)
        if float(shift.max() - shift.min()) <= 1e-3:
            k = float(shift.mean())
            out.append(f"your distances are off by {k:+.4g}: the bias at distance 0 is {float(z[0]):.4g} on head 0 "
                       f"(-m * (i - j {'-' if k > 0 else '+'} {abs(k):.4g}))")
        else:
            out.append(f"your bias at distance 0 is not 0 (head 0: {float(z[0]):.4g})")
    if not causal:
        hi_t = torch.tensor(hi, dtype=torch.float64)
        if torch.isnan(hi_t).any():
            out.append("your bias for keys after the query is not a straight line in the distance")
        else:
            kind = "symmetric (-m * |i - j|)" if bool(((hi_t - got).abs() <= tol).all()) else \
                "antisymmetric (-m * (i - j))" if bool(((hi_t + got).abs() <= tol).all()) else \
                f"neither symmetric nor antisymmetric (head 0 falls by {float(hi_t[0]):.4g} per step after the query)"
            wanted = "symmetric (-m * |i - j|)" if symmetric else "antisymmetric (-m * (i - j))"
            if kind != wanted:
                out.append(f"your bias is {kind} for keys after the query; the configuration expects {wanted}")
    return out


def _is_permutation(want: list[float], got: list[float], tol: float) -> bool:
    """``got`` holds the values of ``want`` (to ``tol``) in another order."""
    return all(abs(x - y) <= tol for x, y in zip(sorted(want), sorted(got)))


def _edges(buckets: Tensor, rel: Tensor) -> list[int]:
    """The relative positions where the bucket changes (the first position of each new bucket, away from 0)."""
    out = []
    for side in (rel >= 0, rel <= 0):
        r, b = rel[side], buckets[side]
        order = torch.argsort(r.abs())
        r, b = r[order], b[order]
        out += [int(r[t]) for t in range(1, r.numel()) if b[t] != b[t - 1]]
    return sorted(set(out))


def explain_t5(fn: Callable, reference: Callable[[Tensor], Tensor], *, max_distance: int) -> list[str]:
    """What a candidate T5 bucket function computes against ``reference`` (``rel -> buckets``): the buckets used,
    where they saturate, whether the two directions differ, the sign, and the first bucket edge that differs."""
    L = 4 * max_distance
    rel = torch.arange(-L, L + 1)
    try:
        with torch.no_grad():
            got = fn(rel.clone()).to(torch.int64)
    except Exception as exc:  # noqa: BLE001
        return [f"the estimate cannot describe your buckets: it raised on its probe ({type(exc).__name__})"]
    want = reference(rel).to(torch.int64)
    if torch.equal(got, want):
        return []
    out = []
    mirrored = reference(-rel).to(torch.int64)
    if torch.equal(got, mirrored):
        return ["your relative position is query - key: your buckets are the configuration's mirrored (T5's is "
                "key - query)"]

    def describe(b: Tensor) -> dict:
        pos_side, neg_side = b[rel > 0], b[rel < 0]
        sat_pos = int(rel[rel > 0][(pos_side != pos_side[-1]).nonzero().max() + 1]) if bool(
            (pos_side != pos_side[-1]).any()) else 1
        sat_neg = int(rel[rel < 0][(neg_side != neg_side[0]).nonzero().min() - 1]) if bool(
            (neg_side != neg_side[0]).any()) else -1
        return {"n": int(torch.unique(b).numel()), "top": int(b.max()),
                "two_sided": not bool(set(pos_side.tolist()) <= {int(b[rel == 0])}) and bool(
                    set(pos_side.tolist()).isdisjoint(set(neg_side.tolist()))),
                "sat": (sat_neg, sat_pos)}

    c, r = describe(got), describe(want)
    if c["two_sided"] != r["two_sided"]:
        out.append("your buckets tell keys before and after the query apart" if c["two_sided"] else
                   "your buckets do not tell keys after the query apart from those before (causal buckets)")
    if c["n"] != r["n"]:
        out.append(f"you use {c['n']} distinct buckets (0..{c['top']}); the configuration uses {r['n']} (0.."
                   f"{r['top']})")
    if c["sat"] != r["sat"]:
        out.append(f"your buckets stop changing at relative positions {c['sat'][0]} and {c['sat'][1]}; the "
                   f"configuration's at {r['sat'][0]} and {r['sat'][1]} (max_distance {max_distance})")
    differ = rel[got != want]
    if differ.numel():
        first = int(differ[torch.argmin(differ.abs() * 2 - (differ > 0).to(torch.int64))])  # nearest 0, + first
        side = rel * (1 if first >= 0 else -1) >= 0

        def edges(b: Tensor) -> list[int]:
            return sorted((e for e in _edges(b[side], rel[side]) if abs(e) <= abs(first)), key=abs)[-4:]
        out.append(f"the first difference is at relative position {first}: bucket {int(got[rel == first])} where "
                   f"the configuration has {int(want[rel == first])} (the last bucket edges up to there: yours "
                   f"{edges(got)}, the configuration's {edges(want)})")
    return out
