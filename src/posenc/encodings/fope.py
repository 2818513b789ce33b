"""Fourier position embedding, FoPE (Hua et al., ICML 2025, arXiv 2412.17739): each rotary channel is a Fourier series.

RoPE gives pair ``d`` the single wave ``e^(i t theta_d)``. FoPE makes it a learned Fourier series over the kept
frequencies and clips the frequencies too low to complete a period within the training length to zero frequency::

    kept    m = 0 .. M-1 with theta_m = base^(-2m / rotary_dim) > 2 pi / max_seq_len   (or the first num_inv_freq)
    cos'_d(t) = sum_m cos(t theta_m) C^cos[h, m, d]        d = 0 .. M-1
    sin'_d(t) = sum_m sin(t theta_m) C^sin[h, m, d]
    pairs d = M .. rotary_dim/2 - 1 ("clipped"): cos' = 1 and sin' = 1 ("phase45") or 0 ("passthrough")

and rotates q and k of kv head ``h`` like RoPE with ``(cos', sin')``: ``(a, b) -> (a cos' - b sin', b cos' + a sin')``.
With ``C = I`` and ``clipped="passthrough"`` it is RoPE on the kept pairs and the identity on the clipped ones.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posenc._checks import check_bool, is_int
from posenc.base import register
from posenc.encodings.rope import RoPE, apply_rope, check_head_tensor

__all__ = ["CLIPPED", "FoPE", "fope_kept_frequencies"]

# What the clipped (sub-floor) pairs get. "phase45": cos' = sin' = 1, as the authors' training code (InternLM's xtuner
# FourierEmbedding), sglang's FourierRotaryEmbedding and vLLM's at commit c215d1e pad them: zero frequency at phase 45
# degrees (the pair is turned by 45 degrees and scaled by sqrt(2), the same at every position). "passthrough":
# cos' = 1, sin' = 0, the paper's "zero frequency" read literally, as vLLM's fope.py at commit 151a2c7 pads them (the
# pair is left as it is). A checkpoint needs the convention it was trained with: phase45 for xtuner-trained ones.
CLIPPED = ("phase45", "passthrough")


def fope_kept_frequencies(inv_freq: Tensor, *, max_seq_len: int, num_inv_freq: int | None = None) -> int:
    """How many of the decreasing frequencies ``inv_freq`` ``(F,)`` FoPE keeps: ``M``.

    The first ``num_inv_freq`` when given (vLLM's and xtuner's ``num_inv_freq``), else those with
    ``theta > 2 pi / max_seq_len`` (a full period within the training length). Frequencies decrease, so the kept
    ones are always the first ``M`` pairs.
    """
    if num_inv_freq is not None:
        return num_inv_freq
    return int((inv_freq > 2.0 * math.pi / max_seq_len).sum())


@register("fope")
class FoPE(RoPE):
    """Fourier position embedding (Hua et al. 2025, arXiv 2412.17739): RoPE whose channels are learned Fourier series.

    Formula (per kv head ``h``; ``theta_m = base^(-2m / rotary_dim)``; module docstring for the clipped pairs)::

        cos'_d(t) = sum_{m < M} cos(t theta_m) C^cos[h, m, d],   sin'_d(t) = sum_{m < M} sin(t theta_m) C^sin[h, m, d]

    and q, k rotated pairwise by ``(cos'_d(t), sin'_d(t))`` as RoPE does (``layout`` as in :class:`RoPE`). Unlike RoPE,
    ``q_t . k_s`` is not a function of ``t - s`` alone unless ``C^cos = C^sin`` is diagonal (then each pair is a
    scaled rotation); the paper argues that this mixing, with the clipping, is what improves length generalisation.

    Shapes: q ``(B, H, Tq, D)``, k ``(B, Hkv, Tk, D)`` -> the same shapes and dtypes; positions ``(T,)`` or
    ``(B, T)``. The coefficient tensors ``cos_coef``/``sin_coef`` are ``(S, M, M)`` with one slot per query head
    (``S = n_heads``, ``separate_heads=True``) or one shared slot (``S = 1``). A kv head uses the mean of its group's
    slots (slots ``j*S/Hkv .. (j+1)*S/Hkv - 1``, SDPA's grouped-query convention) and its query heads use that same
    table, so one set of weights serves any ``n_kv_heads``; with ``Hkv = H`` the slots are the heads (a one-head probe,
    as the plots use, gets the mean of all slots).
    :meth:`load_kv_head_coefficients` loads a checkpoint's ``(Hkv, M, M)`` coefficients (vLLM's ``cos_coef``).

    Args:
        base: frequency base (10000).
        layout: ``"half"`` (default; vLLM's ``is_neox_style`` and the authors' code) or ``"interleaved"``.
        rotary_dim / rotary_fraction: as :class:`RoPE` (channels past ``rotary_dim`` pass through).
        num_inv_freq: keep the first ``num_inv_freq`` frequencies; ``None`` (default) keeps those above
            ``2 pi / max_seq_len`` (``max_seq_len`` is the training length ``L_train``).
        separate_heads: one coefficient set per head (default ``True``, vLLM's ``fope_sep_head``) or one shared.
        init_factor: coefficients start at ``I + N(0, init_factor^2 / M)``: the identity plus Xavier-normal noise of
            gain ``init_factor`` on each ``M x M`` matrix (xtuner adds the identity to ``xavier_normal_`` of the
            whole ``(Hkv, M, M)`` tensor, whose fans, and so its spread, differ); default ``0.1`` (sglang's default;
            Intern-S1's config uses 0.5).
        clipped: ``"phase45"`` (default: cos' = sin' = 1 on the clipped pairs, what the authors trained with and
            what their checkpoints need) or ``"passthrough"`` (cos' = 1, sin' = 0; vLLM's fope.py at commit 151a2c7).

    Limits: the angles ``t theta_m`` are exact in float64 at every int64 position (RoPE's tables), then the cosines
    and sines are rounded to float32 and mixed by the coefficients in float32 (float64 for float64 inputs): at
    position 10^6 the tables carry float32 rounding only (~1e-7 relative per term, ``M`` terms). The rotation runs
    the reference formula (:func:`~posenc.encodings.rope.apply_rope`): the tables are per head and carry gradients,
    which the fused kernels do not take (:func:`posenc.kernels.fast_rotate` declines them).

    KV cache: the tables depend on a token's position and the coefficients only, so keys are rotated once and cached
    rotated, and decoding step by step equals the full forward.
    """

    family = "rotary"
    paper = "2412.17739"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: float = 10000.0, layout: str = "half", rotary_dim: int | None = None,
                 rotary_fraction: float | None = None, num_inv_freq: int | None = None, separate_heads: bool = True,
                 init_factor: float = 0.1, clipped: str = "phase45") -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, base=base,
                         layout=layout, rotary_dim=rotary_dim, rotary_fraction=rotary_fraction)
        n_freq = self.rotary_dim // 2
        if num_inv_freq is not None and (not is_int(num_inv_freq) or not 1 <= num_inv_freq <= n_freq):
            raise ValueError(f"fope: num_inv_freq must be an int in [1, rotary_dim / 2 = {n_freq}] or None (keep the "
                             f"frequencies above 2 pi / max_seq_len); got {num_inv_freq!r}.")
        check_bool(separate_heads, "fope: separate_heads", hint="True for one coefficient set per head.")
        if isinstance(init_factor, bool) or not isinstance(init_factor, (int, float)) or \
                not math.isfinite(init_factor) or init_factor < 0:
            raise ValueError(f"fope: init_factor must be a finite number >= 0 (the gain of the coefficients' noise; "
                             f"0 starts at plain RoPE on the kept pairs); got {init_factor!r}.")
        if clipped not in CLIPPED:
            raise ValueError(f"fope: clipped must be one of {CLIPPED} ('phase45': cos = sin = 1 on the clipped "
                             f"pairs, as the authors trained; 'passthrough': cos = 1, sin = 0); got {clipped!r}.")
        kept = fope_kept_frequencies(self.inv_freq(), max_seq_len=max_seq_len, num_inv_freq=num_inv_freq)
        if kept < 1:
            raise ValueError(f"fope: no frequency completes a period within max_seq_len={max_seq_len} (the largest "
                             f"is 1 rad/token, 2 pi / max_seq_len = {2 * math.pi / max_seq_len:.3g}); build it with "
                             f"max_seq_len > 6 or pass num_inv_freq.")
        self.num_inv_freq = num_inv_freq
        self.n_kept = kept
        self.separate_heads = separate_heads
        self.init_factor = float(init_factor)
        self.clipped = clipped
        slots = n_heads if separate_heads else 1
        self.cos_coef = nn.Parameter(torch.empty(slots, kept, kept))  # (S, M, M): [slot, input freq m, output pair d]
        self.sin_coef = nn.Parameter(torch.empty(slots, kept, kept))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``I + N(0, init_factor^2 / M)`` for both coefficient tensors (Xavier-normal of gain ``init_factor``)."""
        std = self.init_factor / math.sqrt(self.n_kept)  # Xavier normal of an M x M matrix: gain * sqrt(2 / (M + M))
        with torch.no_grad():
            for coef in (self.cos_coef, self.sin_coef):
                if coef.device.type == "meta":
                    continue
                coef.normal_(0.0, std).add_(torch.eye(self.n_kept, dtype=coef.dtype, device=coef.device))

    def load_kv_head_coefficients(self, cos_coef: Tensor, sin_coef: Tensor) -> None:
        """Load a checkpoint's coefficients: ``(Hkv, M, M)`` per kv head, or ``(M, M)`` / ``(1, M, M)`` shared.

        With ``separate_heads`` every query head of kv head ``j``'s group gets ``j``'s matrix (their mean is then
        exactly it); a shared encoding takes a shared matrix only. Nothing changes when the shapes do not fit.
        """
        tensors = []
        for name, value in (("cos_coef", cos_coef), ("sin_coef", sin_coef)):
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise TypeError(f"fope: {name} must be a floating tensor (Hkv, M, M) or (M, M); got "
                                f"{type(value).__name__ if not isinstance(value, Tensor) else value.dtype}.")
            value = value[None] if value.dim() == 2 else value
            m = self.n_kept
            if value.dim() != 3 or value.shape[1:] != (m, m):
                raise ValueError(f"fope: {name} must be (Hkv, {m}, {m}) or ({m}, {m}) (M = {m} kept frequencies); "
                                 f"got {tuple(value.shape)}. Hint: build FoPE with the checkpoint's num_inv_freq or "
                                 f"max_seq_len so that M matches.")
            slots = self.cos_coef.shape[0]
            if value.shape[0] > slots or slots % value.shape[0]:
                raise ValueError(f"fope: {name} has {value.shape[0]} sets for {slots} slot(s) "
                                 f"({'one per head' if self.separate_heads else 'shared'}); the sets must divide the "
                                 f"slots (n_kv_heads dividing n_heads, or separate_heads=True).")
            tensors.append(value.repeat_interleave(slots // value.shape[0], dim=0))
        with torch.no_grad():
            self.cos_coef.copy_(tensors[0])
            self.sin_coef.copy_(tensors[1])

    def kv_head_coefficients(self, n_kv_heads: int) -> tuple[Tensor, Tensor]:
        """``(C^cos, C^sin)`` of each kv head, ``(Hkv|1, M, M)``: the mean of its group's slots (shared: the one)."""
        slots = self.cos_coef.shape[0]
        if slots == 1:
            return self.cos_coef, self.sin_coef
        if slots % n_kv_heads:
            raise ValueError(f"fope: k has {n_kv_heads} heads, which do not divide the {slots} coefficient slots "
                             f"(one per query head, n_heads={self.n_heads}); n_kv_heads must divide n_heads.")
        group = slots // n_kv_heads
        return (self.cos_coef.unflatten(0, (n_kv_heads, group)).mean(1),
                self.sin_coef.unflatten(0, (n_kv_heads, group)).mean(1))

    def fourier_cos_sin(self, base_cos: Tensor, base_sin: Tensor, n_kv_heads: int) -> tuple[Tensor, Tensor]:
        """FoPE's tables from RoPE's: ``(B|1, T, F)`` cos/sin of ``t theta`` -> ``(B|1, Hkv|1, T, F)`` cos'/sin'."""
        m = self.n_kept
        c_cos, c_sin = self.kv_head_coefficients(n_kv_heads)  # (Hkv|1, M, M)
        compute = base_cos.dtype
        cos = torch.einsum("btm,hmd->bhtd", base_cos[..., :m], c_cos.to(compute))  # (B|1, Hkv|1, T, M)
        sin = torch.einsum("btm,hmd->bhtd", base_sin[..., :m], c_sin.to(compute))
        clipped = base_cos.shape[-1] - m
        if clipped:
            cos = torch.nn.functional.pad(cos, (0, clipped), value=1.0)
            sin = torch.nn.functional.pad(sin, (0, clipped), value=1.0 if self.clipped == "phase45" else 0.0)
        return cos, sin

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate ``q`` ``(B, H, Tq, D)`` at ``q_pos`` and ``k`` ``(B, Hkv, Tk, D)`` at ``k_pos`` (same shapes back)."""
        check_head_tensor(q, self.head_dim, "q")
        check_head_tensor(k, self.head_dim, "k")
        heads, kv_heads = q.shape[1], k.shape[1]
        if heads % kv_heads:
            raise ValueError(f"fope: q has {heads} heads and k {kv_heads}; the kv heads must divide the query heads "
                             f"(grouped-query attention).")
        cos_k, sin_k = self.fourier_cos_sin(*self._cos_sin_for(k, k_pos, "k", None), kv_heads)
        if q_pos is k_pos and q.dtype == k.dtype and q.shape[0] == k.shape[0] and q.shape[2] == k.shape[2]:
            cos_q, sin_q = cos_k, sin_k  # self-attention: one table for both
        else:
            cos_q, sin_q = self.fourier_cos_sin(*self._cos_sin_for(q, q_pos, "q", None), kv_heads)
        if cos_q.shape[1] > 1 and heads != kv_heads:  # kv head j's table serves its group of query heads
            group = heads // kv_heads
            cos_q, sin_q = (t.repeat_interleave(group, dim=1) for t in (cos_q, sin_q))  # (B|1, H, Tq, F)
        return apply_rope(q, cos_q, sin_q, layout=self.layout), apply_rope(k, cos_k, sin_k, layout=self.layout)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, kept={self.n_kept}, separate_heads={self.separate_heads}, "
                f"clipped={self.clipped!r}")
