"""STRING: RoPE in a learned orthogonal basis, on 1-D, 2-D or 3-D coordinates (Schenck et al., arXiv 2502.02562)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from posenc._angles import exact_angles
from posenc.base import register
from posenc.encodings._rotnd import RotationND
from posenc.encodings.rope import LAYOUTS, apply_rope

__all__ = ["STRING", "cayley", "circulant_spectrum", "string_frequencies"]

VARIANTS = ("cayley", "circulant")


def cayley(weight: Tensor) -> Tensor:
    """The Cayley transform ``P = (I - S)(I + S)^{-1}`` of ``S = W - W^T``: orthogonal ``(..., D, D)``, float64.

    ``I + S`` is invertible for every skew-symmetric ``S`` (its eigenvalues are ``1 + i lambda``); ``(I - S)`` and
    ``(I + S)^{-1}`` commute, so ``P = solve(I + S, I - S)``. ``W = 0`` gives ``P = I`` exactly.
    """
    w = weight.to(torch.float64)
    s = w - w.transpose(-1, -2)
    eye = torch.eye(w.shape[-1], dtype=torch.float64, device=w.device)
    return torch.linalg.solve(eye + s, eye - s)


def string_frequencies(head_dim: int, axes: int, base: float, *, device=None) -> Tensor:
    """RoPE's frequencies split over the axes: ``(axes, m)``, ``m = head_dim / (2 axes)``, ``base^(-j / m)``.

    Pair ``k * m + j`` rotates with axis ``k`` at frequency ``base^(-j / m)``; on one axis this is RoPE's
    ``base^(-2j / head_dim)``.
    """
    m = head_dim // (2 * axes)
    theta = torch.pow(float(base), -torch.arange(m, device=device, dtype=torch.float64) / m)
    return theta.expand(axes, m)


def circulant_spectrum(weight: Tensor) -> Tensor:
    """Rotation frequencies of circulant generators ``L = C - C^T``, ``C = circ(c)``: ``2 Im(fft(c))``, float64.

    ``circ(c)`` is diagonalised by the DFT with eigenvalues ``fft(c)``, and ``circ(c)^T`` has ``conj(fft(c))``, so
    ``L`` has ``2i Im(fft(c))``: Fourier mode ``f`` rotates at ``2 Im(fft(c))_f``.
    """
    return 2 * torch.fft.fft(weight.to(torch.float64)).imag


@register("string")
class STRING(RotationND):
    """STRING: translation-invariant learned rotations of N-d coordinates (Schenck et al. 2025, arXiv 2502.02562).

    ``R(r) = exp(sum_k r_k L_k)`` with commuting skew-symmetric generators ``L_k``, so
    ``R(r_q)^T R(r_k) = R(r_k - r_q)`` and scores depend only on coordinate differences, for integer and continuous
    coordinates alike. Two ways to make generators commute, as in the paper (which publishes no code; this is
    written from its formulas):

    - ``variant="cayley"`` (default): ``L_k = P^T D_k P``, ``D_k`` RoPE's block-diagonal generators, so
      ``R(r) = P^T RoPE(r) P`` with ``P = (I - S)(I + S)^{-1}`` orthogonal, ``S = W - W^T`` learned (``W`` starts
      at 0). ``S = 0`` is RoPE exactly (same frequencies, same ``layout``): pair ``k m + j`` (``m = head_dim /
      (2 axes)``) rotates by ``r_k base^(-j / m)``. ``P`` could be folded into ``W_q``/``W_k``; it is applied here,
      and so is ``P^T`` (it cancels in ``q . k`` but keeps ``R(r)`` the paper's rotation).
    - ``variant="circulant"``: ``L_k = C_k - C_k^T`` with ``C_k = circ(c_k)`` learned, diagonalised by the DFT:
      ``R(r) x = ifft(exp(i sum_k r_k w_k) * fft(x))``, ``w_k = 2 Im(fft(c_k))``, ``O(D log D)`` per vector. Initial
      ``c_k`` (our choice): Fourier modes ``f = 1 .. D/2 - 1`` rotate at RoPE's frequencies, mode ``f`` along axis
      ``(f - 1) mod A``; modes 0 and ``D/2`` never rotate (their eigenvalues are real, so zero).

    Shapes: q ``(B, H, Tq, D)``, k ``(B, Hkv, Tk, D)``; coordinates ``(B, T, A)`` int64/float32/float64 or a table
    ``Positions(coordinates=...)`` ``(L, A)`` / ``(B, L, A)`` indexed by plain positions (default: ``(0, .., 0, p)``).

    Args:
        axes: number of coordinate axes ``A`` (1, 2 or 3).
        variant: ``"cayley"`` or ``"circulant"``.
        base: RoPE frequency base (10000).
        layout: RoPE pair layout of the Cayley variant, ``"half"`` or ``"interleaved"``.
        position_scale: coordinates are multiplied by it (1: RoPE's integer positions).
        rotation_heads: number of learned ``P`` (or ``c``) sets ``G``; head ``h`` of ``n`` uses set ``h G // n``
            (``G`` must divide the key/value heads). Default 1.

    Numerics and limits: angles ``r_k theta`` are formed in float64 (integer coordinates range-reduced exactly, as
    RoPE's), so position 10**6 holds ~1e-8 rad; ``P`` is solved in float64 and applied in float32 (float64 for
    float64 input), so ``R`` is orthogonal to float32 rounding at any position. Cost: two ``D x D`` products per
    head vector (Cayley) or two FFTs (circulant) on top of RoPE. KV cache: keys are rotated by their own
    coordinates when computed and cached rotated, so decoding reads the same table rows a full forward does.
    """

    paper = "2502.02562"

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False, axes: int = 1,
                 variant: str = "cayley", base: float = 10000.0, layout: str = "half",
                 position_scale: float | None = None, rotation_heads: int = 1) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, axes=axes,
                         position_scale=position_scale, rotation_heads=rotation_heads, default_scale=1.0)
        if variant not in VARIANTS:
            raise ValueError(f"string: variant must be one of {VARIANTS}; got {variant!r}.")
        if layout not in LAYOUTS:
            raise ValueError(f"string: layout must be one of {LAYOUTS}; got {layout!r}.")
        if isinstance(base, bool) or not isinstance(base, (int, float)) or not 1 < base < float("inf"):
            raise ValueError(f"string: base must be a finite number > 1; got {base!r}.")
        d = self.head_dim
        if variant == "cayley" and (d // 2) % axes:
            raise ValueError(f"string: head_dim / 2 = {d // 2} pairs must split evenly over axes={axes}; choose a "
                             f"head_dim that is a multiple of {2 * axes}.")
        if variant == "circulant" and d < 4:
            raise ValueError(f"string: the circulant variant needs head_dim >= 4 (modes 1 .. D/2 - 1 rotate); got "
                             f"head_dim={d}.")
        self.variant = variant
        self.base = float(base)
        self.layout = layout
        g = rotation_heads
        if variant == "cayley":
            self.weight = nn.Parameter(torch.zeros(g, d, d))  # S = W - W^T; W = 0: P = I, RoPE exactly
        else:
            self.weight = nn.Parameter(self._circulant_init(g, axes, d))  # (G, A, D): c_k

    def _circulant_init(self, g: int, axes: int, d: int) -> Tensor:
        modes = torch.arange(1, d // 2)  # the modes that can rotate
        omega = torch.pow(self.base, -2 * (modes - 1).double() / d)  # RoPE's frequencies over the modes
        spec = torch.zeros(axes, d, dtype=torch.complex128)
        for k in range(axes):
            mine = (modes - 1) % axes == k
            spec[k, modes[mine]] = 0.5j * omega[mine]
            spec[k, d - modes[mine]] = -0.5j * omega[mine]  # Hermitian: c is real
        c = torch.fft.ifft(spec).real.float()  # 2 Im(fft(c))_f = omega_f
        return c.expand(g, axes, d).clone()

    def rope_angles(self, coords: Tensor) -> Tensor:
        """float64 angles ``(B|1, T, D/2)`` of the Cayley variant's RoPE for coordinates ``(B|1, T, A)``."""
        theta = string_frequencies(self.head_dim, self.n_axes, self.base, device=coords.device)  # (A, m)
        if not coords.dtype.is_floating_point and self.position_scale == 1.0:
            # integer coordinates: RoPE's exact range reduction, so S = 0 is RoPE bit for bit at any position
            parts = [exact_angles(coords[..., k], theta[k]) for k in range(self.n_axes)]
        else:
            c = self.scaled(coords)
            parts = [c[..., k:k + 1] * theta[k] for k in range(self.n_axes)]
        return torch.cat(parts, dim=-1)

    def generator_matrices(self, set_index: int = 0) -> Tensor:
        i = self.check_set(set_index)
        d, a = self.head_dim, self.n_axes
        w = self.weight[i].detach()
        gens = torch.zeros(a, d, d, dtype=torch.float64, device=w.device)
        if self.variant == "circulant":
            idx = (torch.arange(d)[:, None] - torch.arange(d)[None, :]) % d  # circ(c)[i, j] = c[(i - j) mod D]
            circ = w.to(torch.float64)[:, idx.to(w.device)]  # (A, D, D)
            return (circ - circ.transpose(-1, -2)) * self.position_scale
        theta = string_frequencies(d, a, self.base, device=w.device)  # (A, m)
        m, f = theta.shape[-1], d // 2
        for k in range(a):
            pair = torch.arange(k * m, (k + 1) * m, device=w.device)
            first, second = (pair, pair + f) if self.layout == "half" else (2 * pair, 2 * pair + 1)
            gens[k, second, first] = theta[k]  # d/dr (x_a, x_b) = theta (-x_b, x_a)
            gens[k, first, second] = -theta[k]
        p = cayley(w)
        return p.T @ gens @ p * self.position_scale  # L_k = P^T D_k P

    def transform(self, x: Tensor, coords: Tensor) -> Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        sets = self.sets(x.shape[1], x.device)
        if self.variant == "cayley":
            p = cayley(self.weight).to(compute)[sets]  # (h, D, D)
            ang = self.rope_angles(coords)  # (B|1, T, D/2)
            y = torch.einsum("hij,bhtj->bhti", p, x.to(compute))  # P x
            y = apply_rope(y, ang.cos().to(compute), ang.sin().to(compute), layout=self.layout)
            return torch.einsum("hji,bhtj->bhti", p, y).to(x.dtype)  # P^T RoPE(r) P x
        omega = circulant_spectrum(self.weight)[sets]  # (h, A, D)
        phase = torch.einsum("bta,had->bhtd", self.scaled(coords), omega)  # (B|1, h, T, D) float64
        cplx = torch.complex128 if compute == torch.float64 else torch.complex64
        turn = torch.polar(torch.ones_like(phase), phase).to(cplx)  # exp(i phase), formed in float64
        return torch.fft.ifft(torch.fft.fft(x.to(compute)) * turn).real.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variant={self.variant!r}, base={self.base:g}, layout={self.layout!r}"

