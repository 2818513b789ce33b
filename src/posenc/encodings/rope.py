"""Rotary position embedding, RoPE (Su et al. 2021, arXiv 2104.09864), in both pair layouts.

Each pair of query/key channels ``(x_a, x_b)`` is rotated by the angle ``p * theta_i`` with
``theta_i = base^(-2i / rotary_dim)``; then ``q_n . k_m`` depends on positions only through ``n - m``.

Which channels form pair ``i`` is the *layout*:

- ``"half"``: ``(x[i], x[i + rotary_dim/2])`` — GPT-NeoX and Hugging Face's ``rotate_half``;
- ``"interleaved"``: ``(x[2i], x[2i + 1])`` — the paper, Meta's llama code, torchtune.

The two are the same encoding up to a fixed permutation of channels; :func:`rope_permutation` gives it and
:func:`permute_projection` applies it to q/k projection weights, so a checkpoint can switch layout with identical
outputs.

Numerics: angles are formed in float64 (``pos * theta`` loses ~0.06 rad in float32 at position 10**6) and only the
cosines/sines are rounded to float32. The rotation itself runs in float32 (float64 for float64 inputs) and the
result is cast back to the input dtype. What no dtype choice here can fix: a bfloat16 (float16) result carries 8 (11)
significant bits, so rotated bfloat16 queries/keys are exact only to ~4e-3 (~5e-4) relative at every position, 10**6
included; the angle adds no error of its own (``docs/numerics.md``, ``posenc numerics``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from posenc._angles import exact_angles
from posenc._checks import is_int, reads_values
from posenc.base import PositionalEncoding, check_positions_layout, register
from posenc.kernels import fast_rotate
from posenc.kernels.reference import LAYOUTS, apply_rope  # the formula, kept with the kernels it checks
from posenc.positions import Positions
from posenc.rope_scaling import SCALING_METHODS, llama_4_query_scale, logn_scale, resolve_scaling, scaled_inv_freq

__all__ = [
    "LAYOUTS",
    "RoPE",
    "apply_rope",
    "check_head_tensor",
    "permute_projection",
    "rope_angles",
    "rope_cos_sin",
    "rope_frequencies",
    "rope_permutation",
]



def _angle_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def rope_frequencies(rotary_dim: int, base: float = 10000.0, *, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float64) -> Tensor:
    """``theta_i = base^(-2i / rotary_dim)`` for ``i = 0 .. rotary_dim/2 - 1``, shape ``(rotary_dim // 2,)``."""
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rope: rotary_dim must be a positive even number (channels rotate in pairs); "
                         f"got {rotary_dim}.")
    exponent = torch.arange(0, rotary_dim, 2, device=device, dtype=torch.float64) / rotary_dim
    return torch.pow(float(base), -exponent).to(dtype)


def rope_angles(pos: Tensor, inv_freq: Tensor) -> Tensor:
    """``pos * theta``: ``(...)`` int positions x ``(F,)`` frequencies -> ``(..., F)`` in float64 (float32 on MPS).

    Exact at every int64 position: from 2**24 on, the product is range-reduced exactly (:mod:`posenc._angles`).
    """
    return exact_angles(pos, inv_freq, _angle_dtype(pos.device))


def rope_cos_sin(pos: Tensor, inv_freq: Tensor, *, dtype: torch.dtype = torch.float32,
                 scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(scale * cos(angles), scale * sin(angles))`` in ``dtype``, each of shape ``(..., F)``."""
    angles = rope_angles(pos, inv_freq)
    return (angles.cos() * scale).to(dtype), (angles.sin() * scale).to(dtype)


def rope_permutation(head_dim: int, *, rotary_dim: int | None = None, src: str = "half",
                     dst: str = "interleaved") -> Tensor:
    """Channel permutation ``perm`` with ``x_dst = x_src[..., perm]`` for RoPE layouts.

    Half layout pairs ``(i, i + r/2)``; interleaved pairs ``(2i, 2i + 1)``. Channels past ``rotary_dim`` stay put.
    """
    r = head_dim if rotary_dim is None else rotary_dim
    for layout in (src, dst):
        if layout not in LAYOUTS:
            raise ValueError(f"rope: layout must be one of {LAYOUTS}; got {layout!r}.")
    if r % 2 or not 0 < r <= head_dim:
        raise ValueError(f"rope: rotary_dim must be even and in (0, head_dim={head_dim}]; got {r}.")
    perm = torch.arange(head_dim)
    if src == dst:
        return perm
    half = torch.arange(r // 2)
    if dst == "interleaved":  # x_int[2i] = x_half[i], x_int[2i+1] = x_half[i + r/2]
        perm[0:r:2], perm[1:r:2] = half, half + r // 2
    else:  # x_half[i] = x_int[2i], x_half[i + r/2] = x_int[2i + 1]
        perm[: r // 2], perm[r // 2: r] = 2 * half, 2 * half + 1
    return perm


def permute_projection(weight: Tensor, *, n_heads: int, head_dim: int, rotary_dim: int | None = None,
                       src: str = "half", dst: str = "interleaved") -> Tensor:
    """Reorder the output rows of a q or k projection so a model can switch RoPE layout with identical outputs.

    Args:
        weight: ``(n_heads * head_dim, in_features)`` weight or ``(n_heads * head_dim,)`` bias of the projection.
        n_heads: heads of that projection (KV heads for the key projection).

    Returns:
        The permuted tensor (a new tensor; ``weight`` is untouched).
    """
    if weight.shape[0] != n_heads * head_dim:
        raise ValueError(f"permute_projection: weight has {weight.shape[0]} output rows, expected n_heads * head_dim "
                         f"= {n_heads} * {head_dim} = {n_heads * head_dim}.")
    perm = rope_permutation(head_dim, rotary_dim=rotary_dim, src=src, dst=dst).to(weight.device)
    per_head = weight.reshape(n_heads, head_dim, *weight.shape[1:])  # (H, D, ...)
    return per_head.index_select(1, perm).reshape(weight.shape)


@register("rope")
class RoPE(PositionalEncoding):
    """Rotary position embedding (Su et al. 2021, arXiv 2104.09864): rotates q and k by position.

    Formula:
        $$
        q'_m = R_{\\Theta,m}\\, q_m,\\quad
        k'_n = R_{\\Theta,n}\\, k_n,\\quad
        \\theta_i = b^{-2i/d} \\;\\Rightarrow\\; q'^{\\top}_m k'_n = q_m^\\top R_{\\Theta,n-m}\\, k_n
        $$

    Args:
        base: frequency base (10000 in the paper and llama 1/2; 500000 in llama 3).
        layout: ``"half"`` (GPT-NeoX / HF ``rotate_half``) or ``"interleaved"`` (paper, llama, torchtune).
        rotary_dim: rotate only the first ``rotary_dim`` channels of each head (partial RoPE, as GPT-NeoX/Phi do);
            must be even. Defaults to all of ``head_dim``.
        rotary_fraction: alternative to ``rotary_dim``: ``rotary_dim = int(head_dim * rotary_fraction)``.
        scaling: context extension as a Hugging Face style dict, e.g. ``{"rope_type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 4096}`` (legacy ``"type"`` too; ``"logn": True`` adds log-n query
            scaling, ``"llama_4_scaling_beta": b`` Ministral 3's query scale). Methods and keys:
            :mod:`posenc.rope_scaling`. ``original_max_position_embeddings`` defaults to ``max_seq_len``. ``None``
            (default) is plain RoPE.

    Length-dependent scalings (``dynamic``, ``longrope``) choose their frequencies per :meth:`rotate` call from
    ``seq_len = 1 + max(q_pos, k_pos)``: every query and key of the call uses them, and keys cached by earlier calls
    keep theirs (as Hugging Face does), so KV-cache decoding past the training length differs from a full forward.

    cos/sin tables for positions ``[0, L)`` are cached in non-persistent float32 buffers that grow on demand (powers
    of two, up to ``max(max_seq_len, 65536)`` positions); positions beyond are computed directly with the same
    formula, so results never depend on what is cached.

    A model binds the encoding to each forward's validated :class:`~posenc.Positions` (:meth:`bind`): the bound view
    looks up the cos/sin of those positions once, at its first :meth:`rotate`, and every layer reuses them without
    checking the positions again (a KV-cache decode step does one lookup, with no device sync). A direct
    :meth:`rotate` call with positions of its own checks them and looks them up itself.
    """

    family = "rotary"
    paper = "2104.09864"
    extrapolates = True
    cache_limit = 1 << 16

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: float = 10000.0, layout: str = "half", rotary_dim: int | None = None,
                 rotary_fraction: float | None = None, scaling: dict | None = None) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if layout not in LAYOUTS:
            raise ValueError(f"rope: layout must be one of {LAYOUTS}; got {layout!r}.")
        if not (isinstance(base, (int, float)) and base > 1):
            raise ValueError(f"rope: base must be a number > 1; got {base!r}.")
        if rotary_dim is not None and rotary_fraction is not None:
            raise ValueError("rope: pass rotary_dim or rotary_fraction, not both.")
        if rotary_fraction is not None:
            if not 0 < rotary_fraction <= 1:
                raise ValueError(f"rope: rotary_fraction must be in (0, 1]; got {rotary_fraction}.")
            rotary_dim = int(self.head_dim * rotary_fraction)
        rotary_dim = self.head_dim if rotary_dim is None else rotary_dim
        if not is_int(rotary_dim) or rotary_dim % 2 or \
                not 0 < rotary_dim <= self.head_dim:
            raise ValueError(f"rope: the rotated width must be an even number of channels in (0, head_dim="
                             f"{self.head_dim}] (channels rotate in pairs); got rotary_dim={rotary_dim}. "
                             f"Hint: with an odd head_dim pass an even rotary_dim < head_dim (partial RoPE), or "
                             f"choose dim and n_heads so that dim // n_heads is even.")
        self.base = float(base)
        self.layout = layout
        self.rotary_dim = rotary_dim
        self.attention_scale = 1.0  # multiplies cos and sin (context-extension scalings such as YaRN set it)
        self.scaling = None if scaling is None else self._resolve_scaling(scaling)
        if self.scaling is not None:
            _, self.attention_scale = scaled_inv_freq(rotary_dim, self.base, self.scaling)  # validates the values
        self.register_buffer("_cos", torch.empty(0, rotary_dim // 2), persistent=False)
        self.register_buffer("_sin", torch.empty(0, rotary_dim // 2), persistent=False)
        self._grow_cache(min(max_seq_len, self.cache_limit), torch.device("cpu"))

    def _resolve_scaling(self, scaling: dict) -> dict | None:
        if not isinstance(scaling, dict):
            raise TypeError(f"rope: scaling must be a dict such as {{'rope_type': 'yarn', 'factor': 4.0}} or None; "
                            f"got {type(scaling).__name__}.")
        scaling = dict(scaling)
        theta = scaling.pop("rope_theta", None)  # HF rope_parameters carry these two; they must agree with ours
        if theta is not None and float(theta) != self.base:
            raise ValueError(f"rope: scaling has rope_theta={theta} but base={self.base:g}; pass base={theta} (or "
                             f"build it with posenc.hf.from_hf_config).")
        # p-RoPE's partial_rotary_factor is a parameter of its frequencies over the whole head, not a rotary width
        proportional = scaling.get("rope_type", scaling.get("type")) == "proportional"
        fraction = None if proportional else scaling.pop("partial_rotary_factor", None)
        if fraction is not None and int(self.head_dim * fraction) != self.rotary_dim:
            raise ValueError(f"rope: scaling has partial_rotary_factor={fraction} (rotary_dim "
                             f"{int(self.head_dim * fraction)}) but rotary_dim={self.rotary_dim}; pass "
                             f"rotary_fraction={fraction}.")
        resolved = resolve_scaling(scaling, max_seq_len=self.max_seq_len)
        if resolved["rope_type"] == "default" and not resolved["logn"] and resolved["llama_4_scaling_beta"] is None:
            return None  # plain RoPE, the same numbers as scaling=None
        return resolved

    @property
    def length_dependent(self) -> bool:
        """Whether the frequencies depend on the current sequence length (``dynamic``, ``longrope``)."""
        return self.scaling is not None and SCALING_METHODS[self.scaling["rope_type"]].length_dependent

    def inv_freq(self, device: torch.device | str | None = None, *, seq_len: int | None = None) -> Tensor:
        """``theta_i`` as float64 ``(rotary_dim // 2,)``, scaled by ``scaling`` (at ``seq_len`` if length-dependent)."""
        if self.scaling is None:
            return rope_frequencies(self.rotary_dim, self.base, device=device)
        return scaled_inv_freq(self.rotary_dim, self.base, self.scaling, seq_len=seq_len)[0].to(device)

    def rebuild_caches(self) -> None:
        self._grow_cache(self._cos.shape[0], self._cos.device)

    def _grow_cache(self, length: int, device: torch.device) -> None:
        pos = torch.arange(length, device=device)
        self._cos, self._sin = rope_cos_sin(pos, self.inv_freq(device), scale=self.attention_scale)

    def cos_sin(self, pos: Tensor, *, dtype: torch.dtype = torch.float32,
                seq_len: int | None = None) -> tuple[Tensor, Tensor]:
        """cos/sin at positions ``pos`` ``(T,)`` or ``(B, T)`` -> two tensors ``(..., rotary_dim // 2)``.

        ``seq_len`` is the current length for length-dependent scalings (default ``1 + pos.max()``); the cache holds
        the frequencies of lengths up to ``original_max_position_embeddings``, longer ones are computed directly.
        """
        if self.length_dependent and pos.numel() and reads_values(pos):
            seq_len = int(pos.max()) + 1 if seq_len is None else seq_len
            if seq_len > self.scaling["original_max_position_embeddings"]:
                return rope_cos_sin(pos, self.inv_freq(pos.device, seq_len=seq_len), dtype=dtype,
                                    scale=self.attention_scale)
        # float64 requests, empty positions and torch.compile (where a cache lookup keyed on pos.max() would break
        # the graph) compute directly: the same formula as the cache, so the numbers do not depend on the path.
        if dtype == torch.float64 or pos.numel() == 0 or not reads_values(pos):
            return rope_cos_sin(pos, self.inv_freq(pos.device), dtype=dtype, scale=self.attention_scale)
        return self._lookup(pos, int(pos.max()), dtype)

    def _lookup(self, pos: Tensor, top: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos/sin of non-empty ``pos`` whose largest value is ``top``: rows of the cached tables, grown on demand."""
        cached = self._cos.shape[0]
        if self._cos.device != pos.device or cached <= top < self.cache_limit:
            self._grow_cache(min(max(1 << top.bit_length(), cached, 1), self.cache_limit), pos.device)
        if top >= self._cos.shape[0]:
            return rope_cos_sin(pos, self.inv_freq(pos.device), dtype=dtype, scale=self.attention_scale)
        # index_select, not self._cos[pos]: the same rows at a fifth of advanced indexing's cost (~14 us instead of
        # ~70 us per table for 2048 positions, most of a module call's overhead over the kernel).
        flat = pos if pos.dim() == 1 else pos.reshape(-1)
        cos, sin = self._cos.index_select(0, flat), self._sin.index_select(0, flat)
        if pos.dim() != 1:
            cos, sin = cos.view(*pos.shape, -1), sin.view(*pos.shape, -1)
        return cos.to(dtype), sin.to(dtype)

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate ``q`` ``(B, H, Tq, D)`` at ``q_pos`` and ``k`` ``(B, Hkv, Tk, D)`` at ``k_pos``.

        With ``scaling["logn"]`` the rotated queries are also multiplied by :func:`~posenc.rope_scaling.logn_scale`
        of their positions (keys are not). Length-dependent scalings use ``seq_len = 1 + max(q_pos, k_pos)``.
        """
        seq_len = None
        if self.length_dependent:
            tops = [self._top(p) for p in ((q_pos,) if q_pos is k_pos else (q_pos, k_pos))
                    if isinstance(p, Tensor) and p.numel()]
            seq_len = max(tops) + 1 if tops else None
        if q_pos is k_pos and isinstance(q, Tensor) and isinstance(k, Tensor) and q.dtype == k.dtype:
            # Self-attention (every layer of a model): one cos/sin lookup and one fused call for q and k together.
            check_head_tensor(q, self.head_dim, "q")
            cos, sin = self._cos_sin_for(q, q_pos, "q", seq_len)
            check_head_tensor(k, self.head_dim, "k")
            check_positions_layout(k_pos, k.shape[-2], name="k_pos", batch=k.shape[0], device=k.device)
            fused = fast_rotate(q, k, cos, sin, layout=self.layout)  # posenc.kernels: same numbers, one pass
            q, k = fused if fused is not None else (apply_rope(q, cos, sin, layout=self.layout),
                                                     apply_rope(k, cos, sin, layout=self.layout))
        else:
            q = self.rotate_one(q, q_pos, "q", seq_len=seq_len)
            k = self.rotate_one(k, k_pos, "k", seq_len=seq_len)
        if self.scaling is not None and self.scaling["logn"]:
            scale = logn_scale(q_pos, self.scaling["original_max_position_embeddings"])  # (Tq,) or (B, Tq)
            scale = scale[:, None] if scale.dim() == 1 else scale[:, None, :, None]  # -> (Tq, 1) or (B, 1, Tq, 1)
            q = (q.to(torch.promote_types(q.dtype, torch.float32)) * scale).to(q.dtype)
        if self.scaling is not None and self.scaling["llama_4_scaling_beta"] is not None:
            scale = llama_4_query_scale(q_pos, self.scaling["llama_4_scaling_beta"],
                                        self.scaling["original_max_position_embeddings"])
            scale = scale[:, None] if scale.dim() == 1 else scale[:, None, :, None]  # -> (Tq, 1) or (B, 1, Tq, 1)
            q = (q.to(torch.promote_types(q.dtype, torch.float32)) * scale).to(q.dtype)
        return q, k

    def rotate_one(self, x: Tensor, pos: Tensor, name: str = "x", *, seq_len: int | None = None) -> Tensor:
        """Rotate one tensor ``(B, H, T, D)`` at positions ``(T,)`` or ``(B, T)`` (``seq_len``: see :meth:`cos_sin`)."""
        check_head_tensor(x, self.head_dim, name)
        cos, sin = self._cos_sin_for(x, pos, name, seq_len)
        fused = fast_rotate(x, None, cos, sin, layout=self.layout)  # posenc.kernels: same numbers, one pass
        return fused[0] if fused is not None else apply_rope(x, cos, sin, layout=self.layout)

    def bind(self, positions: Positions) -> RoPE:
        """A view for one forward that looks up the cos/sin of ``positions.pos`` once for all layers (see the class)."""
        if not positions.validated or positions.pos is None or not reads_values(positions.pos):
            return self  # torch.compile computes cos/sin in the graph (cos_sin); nothing to share
        return self.bound_view(positions)

    def _top(self, pos: Tensor) -> int:
        top = self.trusted_max(pos)
        return int(pos.max()) if top is None else top

    def _cos_sin_for(self, x: Tensor, pos: Tensor, name: str, seq_len: int | None) -> tuple[Tensor, Tensor]:
        """Validated ``pos`` for ``x`` and its cos/sin ``(B or 1, T, rotary_dim // 2)`` in ``x``'s compute dtype.

        The positions a bound view was bound to (:meth:`bind`) were checked where they entered: their tables are
        looked up once and shared by every call of the view. Other positions are checked here (metadata, then one
        pass for both bounds: the value check and the table size) and looked up per call.
        """
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        check_positions_layout(pos, x.shape[-2], name=f"{name}_pos", batch=x.shape[0], device=x.device)
        bound = self.__dict__.get("_bound_positions")
        if bound is not None and pos is bound.pos:
            tables = self.__dict__["_bound_tables"]
            key = (dtype, seq_len, pos.device)
            if key not in tables:
                tables[key] = self._cos_sin_checked(pos, bound.max_pos, dtype, seq_len)
            return tables[key]
        top = None
        if pos.numel() and reads_values(pos):
            lo, hi = pos.aminmax()
            if lo < 0:
                raise ValueError(f"{name}_pos must be non-negative; got a minimum of {int(lo)}.")
            top = int(hi)
        return self._cos_sin_checked(pos, top, dtype, seq_len)

    def _cos_sin_checked(self, pos: Tensor, top: int | None, dtype: torch.dtype,
                         seq_len: int | None) -> tuple[Tensor, Tensor]:
        """cos/sin ``(B or 1, T, F)`` of checked positions whose largest value is ``top`` (None: empty, compiling)."""
        cos = None
        if top is not None and dtype is torch.float32 and seq_len is None and type(self).cos_sin is RoPE.cos_sin \
                and not self.length_dependent and not torch.compiler.is_compiling():
            if pos.numel() == 1 and self._cos.device == pos.device and top < self._cos.shape[0]:
                # One position (a KV-cache decode step): a slice of the cached table holds the very numbers a gather
                # would give, without one.
                cos, sin = self._cos[None, top:top + 1], self._sin[None, top:top + 1]  # (1, 1, F) views of the cache
            else:
                cos, sin = self._lookup(pos, top, dtype)
        if cos is None:
            cos, sin = self.cos_sin(pos, dtype=dtype, seq_len=seq_len)
        if cos.dim() == 2:  # (T, F) -> (1, T, F) once here, not in every kernel call (same broadcast, numbers)
            cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
        return cos, sin

    def extra_repr(self) -> str:
        scaling = "" if self.scaling is None else f", scaling={self.scaling['rope_type']!r}"
        return (f"{super().extra_repr()}, base={self.base:g}, layout={self.layout!r}, "
                f"rotary_dim={self.rotary_dim}{scaling}")


def check_head_tensor(x: Tensor, head_dim: int, name: str) -> None:
    """Raise unless ``x`` is a floating ``(B, H, T, D)`` tensor with ``D = head_dim`` (named ``name`` in the error)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor of shape (B, H, T, D); got {type(x).__name__}.")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, H, T, D) = 4 dims; got shape {tuple(x.shape)}. "
                         f"Hint: reshape (B, T, H*D) with x.view(B, T, H, D).transpose(1, 2).")
    if x.shape[-1] != head_dim:
        raise ValueError(f"{name} has head_dim {x.shape[-1]} but the encoding was built for head_dim={head_dim} "
                         f"(dim // n_heads).")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor; got {x.dtype}.")

