"""PaTH attention (Yang et al., NeurIPS 2025, arXiv 2505.16381): keys moved along the sequence by data-dependent
Householder transforms.

Each token ``t`` carries a Householder-like transform ``H_t = I - beta_t w_t w_t^T`` made from the layer's input
``x_t``, and the score of query ``i`` and key ``j <= i`` reads the key moved through every transform after it, up to
and including the query's::

    s_ij = q_i^T H_i H_{i-1} ... H_{j+1} k_j * scale            (H_i applied last; s_ii = q_i . k_i * scale)
    w_t  = L2norm(silu(ShortConv(W_up W_down x_t)))             per kv head, unit vectors (D,)
    beta_t = 2 sigmoid(W_beta x_t + b_beta)                     in (0, 2): beta > 1 gives negative eigenvalues

``beta = 0`` is ordinary attention. With ``forget_gate=True`` FoX's data-dependent decay joins the logits,
``+ sum_{l=j+1..i} log f_l`` with ``log f_t = logsigmoid(W_f x_t + b_f)`` per query head, *not* multiplied by
``scale`` (FoX's convention, arXiv 2503.02130; flash-linear-attention's PaTH-FoX multiplies it by ``scale``).

Shapes: ``q`` ``(B, H, Tq, D)``, ``k`` ``(B, Hkv, Tk, D)``; the features cached beside k/v are ``u`` ``(B, Hkv, T,
D)`` (the projection ``W_up W_down x`` before the short convolution), ``beta`` ``(B, Hkv, T, 1)`` and, with the
gate, ``log_f`` ``(B, H, T, 1)``. The transforms act per *kv head*, as in flash-linear-attention (``w_proj`` and
``bt_proj`` produce ``num_kv_heads`` of them): the cache keeps keys per kv head, so it can keep them transformed.
The projections hold one slot per query head and a kv head uses the mean of its group's slots (``H % Hkv``
groups), so one set of weights serves any ``n_kv_heads`` a model picks; with ``Hkv = H`` the slots are the heads.

Computation (exact, blockwise; the paper's and flash-linear-attention's ``naive.py`` chunked UT transform): the keys
are cut into chunks of ``chunk_size`` (default ``head_dim``) on the key index. Within a chunk the product of its
transforms is ``I - W^T T diag(beta) W`` with ``T = (I + strict_lower(diag(beta) W W^T))^-1`` (a unit lower
triangular solve). Per call (``terms``, ``O(Tk * chunk * D)``) every key is moved to the end of its chunk, every
query back to the start of its chunk, and the scores within each chunk are formed; each block of query rows then
walks back over the earlier chunks, ``r <- r - (r W_c^T)(T_c diag(beta_c) W_c)``, scoring each chunk's keys on the
way: ``O(rows * Tk * D)`` per block as ordinary attention (about 3 times the multiply-adds of ``q k^T``), in ``Tk /
chunk_size`` batched matrix products. Every per-call tensor is at most the size of q or k (with ``chunk_size <=
head_dim``), so ``chunked`` stays ``O(rows * Tk)`` forward and backward. The transforms run in float32 (float64 for
float64 input); measured: float32 outputs within 2e-6 of float64 at 1024 tokens (head_dim 32, chunks of 32 to 128,
random or nearly aligned ``w``). Speed on CPU (``benchmarks/path_speed.py``, one causal call, dim 128, 4 heads, one
thread, medians of 3 interleaved repeats, load 0.3): 4.3x RoPE with SDPA at 256 tokens and 8.5x at 1024 forward,
4.6x and 7.3x forward + backward; a decode step about 3x (measured in an earlier session, not re-run).

Bidirectional attention (our extension; the paper is causal): a key ``j`` after the query reads the query moved
forward through the transforms after it, ``s_ij = q_i^T H_{i+1} ... H_j k_j``: for any pair, the transforms of the
tokens after the earlier of the two up to and including the later, applied to the earlier one. With the gate, the
decay is ``-|c_i - c_j|`` (``c`` the prefix sums of ``log f``) in both directions.

Short convolution and documents: the causal depthwise convolution (kernel ``conv_size``, flash-linear-attention's
``ShortConvolution`` with ``silu``) reads the previous tokens' ``u``, so it runs in ``terms(call)`` over every key's
entries (the cached ones included): a decode step needs the ``conv_size - 1`` tokens before it. A token's
convolution reads a previous token only where the call's ``attn_mask`` lets it attend to it (its own mask row; for
keys that are not queries, any query's row), so a packed document never convolves over the previous document's
tokens and a padded sequence never over padding (flash-linear-attention restarts it at ``cu_seqlens``), whatever the
positions. Positions are not read at all: PaTH encodes order by the key index, as a KV cache appends keys.

KV cache (``commit``): the cache keeps every key moved to the cache's last token, ``H_{T-1} ... H_{j+1} k_j``, and
sets the cached ``beta`` to 0 (their transforms are spent), so the next call applies only its own tokens' transforms
-- ``O(T * D)`` per new token, as flash-linear-attention's ``rank_one_update`` -- and attends with the same formula.
``terms`` (and ``commit``) skip the keys before the queries when all their ``beta`` are exactly 0 and need no
gradient (one host sync per call that has such keys; not under ``torch.compile``), so a decode step costs
``O(T * D)`` too. ``u`` stays cached: the convolution of the next tokens reads it (``conv_size - 1`` of them). The
short convolution's stop at documents needs the call's mask in ``commit`` too: the model passes ``attn_mask``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc._checks import check_int, reads_values
from posenc.base import PositionalEncoding, register
from posenc.terms import AttentionCall, AttentionTerms, LayerView, ScoreBlock, check_head_dim, compute_dtype

__all__ = ["PaTH", "PaTHTerms", "conv_reads", "householder_vectors", "l2_normalize", "short_convolution",
           "ut_transform"]

L2_EPS = 1e-6  # flash-linear-attention's l2norm: x / sqrt(sum x^2 + eps)


def l2_normalize(x: Tensor, eps: float = L2_EPS) -> Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last axis, as flash-linear-attention's ``l2norm``."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def conv_reads(attn_mask: Tensor | None, n_queries: int, n_keys: int, size: int, *,
               start: int = 0) -> Tensor | None:
    """Which previous tokens each token's short convolution reads: ``(B|1, Tk - start, size)`` bool, or ``None``.

    ``reads[b, t, l]`` says whether token ``t`` reads token ``t - l`` (``l = 0`` is the token itself, always
    read). A query token (the last ``n_queries`` keys) reads what its own row of ``attn_mask`` lets it attend to; an
    earlier key (no row of its own) what any query row lets one attend to. With document masks (packed segments,
    padding) that is exactly "the same document": a query row sees only its own document, and any key another
    query sees lies in that query's document, which is contiguous.

    Args:
        attn_mask: bool (True = attend) or additive float mask broadcastable to ``(B, H, Tq, Tk)``, or ``None``
            (every previous token is read: the result is ``None``).
        start: the first token to answer for (tokens ``start .. Tk - 1``).
    """
    if attn_mask is None or size <= 1:
        return None
    visible = attn_mask if attn_mask.dtype == torch.bool else attn_mask > float("-inf")
    visible = visible.reshape((1,) * (4 - visible.dim()) + tuple(visible.shape))  # (Tk,) or (Tq, Tk) masks too
    visible = visible.all(dim=1)  # (B|1, Tq|1, Tk|1): a kv head's transforms serve every head of the mask
    visible = visible.expand(*visible.shape[:2], n_keys)
    device = visible.device
    t = torch.arange(start, n_keys, device=device)[:, None]
    cols = t - torch.arange(size, device=device)  # (Tk - start, size): the token each lag reads
    valid = cols >= 0
    cols = cols.clamp(min=0)
    if visible.shape[1] == 1:  # one row for every token (a padding mask, a decode step)
        reads = visible[:, 0][:, cols]  # (B|1, Tk - start, size)
    else:
        first = n_keys - n_queries  # the first query token
        own_from = max(first, start)
        own = visible[:, torch.arange(own_from - first, n_queries, device=device)[:, None],
                      cols[own_from - start:]]  # (B|1, tokens from own_from, size)
        earlier = visible.any(dim=1)[:, cols[:own_from - start]]  # (B|1, own_from - start, size)
        reads = torch.cat((earlier, own), dim=1)
    reads = reads & valid
    reads[..., 0] = True
    return reads


def short_convolution(u: Tensor, weight: Tensor, reads: Tensor | None) -> Tensor:
    """Causal depthwise convolution over the time axis, ``nn.Conv1d(padding=K - 1, groups=channels)[..., :T]``.

    ``y_t = sum_{l=0}^{K-1} weight[..., K-1-l] * u_{t-l}`` (zero before the first token), where ``u_{t-l}`` counts
    only where ``reads[..., t, l]``.

    Args:
        u: ``(B|1, Hkv, T, D)``.
        weight: ``(Hkv, D, K)``, tap ``K - 1`` for the token itself (``nn.Conv1d``'s layout per channel).
        reads: ``(B|1, T, K)`` bool from :func:`conv_reads`, or ``None`` (every previous token).

    Returns:
        ``(B|1, Hkv, T, D)``.
    """
    size, length = weight.shape[-1], u.shape[-2]
    out = u * weight[..., size - 1][:, None, :]
    for lag in range(1, size):
        shifted = F.pad(u, (0, 0, lag, 0))[..., :length, :]  # u_{t - lag}
        term = shifted * weight[..., size - 1 - lag][:, None, :]
        if reads is not None:
            term = term * reads[:, None, :, lag, None].to(term.dtype)
        out = out + term
    return out


def householder_vectors(u: Tensor, conv_weight: Tensor | None, reads: Tensor | None) -> Tensor:
    """``w = L2norm(silu(ShortConv(u)))`` (``L2norm(u)`` without a convolution), in the dtype of ``u``."""
    if conv_weight is not None:
        u = F.silu(short_convolution(u, conv_weight.to(u.dtype), reads))
    return l2_normalize(u)


def ut_transform(w: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """The WY form of each chunk's product of transforms: ``H_C ... H_1 = I - W^T T diag(beta) W``.

    Args:
        w: ``(..., C, D)`` unit vectors of one chunk's tokens (``H_1`` first); beta: ``(..., C, 1)``.

    Returns:
        ``T`` ``(..., C, C)`` ``= (I + strict_lower(diag(beta) W W^T))^-1`` (unit lower triangular) and
        ``T diag(beta) W`` ``(..., C, D)``.
    """
    wb = w * beta  # (..., C, D)
    eye = torch.eye(w.shape[-2], dtype=w.dtype, device=w.device)
    system = torch.tril(wb @ w.transpose(-1, -2), -1) + eye  # (..., C, C)
    t = torch.linalg.solve_triangular(system, eye.expand_as(system), upper=False, unitriangular=True)
    return t, t @ wb


def _grid(x: Tensor, lead: int, chunks: int, size: int) -> Tensor:
    """``(..., T, X)`` -> ``(..., chunks, size, X)``: ``lead`` zero rows first, zeros after ``T`` up to the end."""
    trail = chunks * size - lead - x.shape[-2]
    return F.pad(x, (0, 0, lead, trail)).unflatten(-2, (chunks, size))


def _repeat_heads(x: Tensor, n_rep: int) -> Tensor:
    """Heads ``(B, Hkv, ...)`` -> ``(B, Hkv * n_rep, ...)``: kv head ``g`` serves query heads ``g*n_rep ..``."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _fit(x: Tensor, width: int) -> Tensor:
    """``x`` cut or zero-padded to ``width`` on its last axis."""
    return x[..., :width] if x.shape[-1] >= width else F.pad(x, (0, width - x.shape[-1]))


@register("path")
class PaTH(PositionalEncoding):
    """PaTH attention (Yang et al. 2025, arXiv 2505.16381): keys moved by data-dependent Householder transforms.

    ``s_ij = q_i^T H_i ... H_{j+1} k_j * scale`` with ``H_t = I - beta_t w_t w_t^T`` (see the module docstring for
    the formula, the blockwise algorithm, the bidirectional extension, documents and the KV cache). Per layer: a
    model builds one instance per attention layer. The projections hold one slot per query head; a kv head uses the
    mean of its group's slots.

    Args:
        rank: width of the low-rank ``W_w = W_up W_down`` (``dim -> rank -> head_dim`` per head), 32 as in
            flash-linear-attention; ``None`` for a full ``dim -> head_dim`` projection per head.
        conv_size: kernel of the short causal convolution over ``W_w x`` (3, as flash-linear-attention); 0 turns
            it (and its ``silu``) off.
        forget_gate: add FoX's decay ``sum_{l=j+1..i} log f_l`` (unscaled, FoX's convention) to the logits.
        chunk_size: key chunk of the blockwise computation (default ``head_dim``, which keeps every per-call tensor
            no larger than q or k); any value gives the same numbers up to rounding.

    Parameters: ``w_down`` ``(rank, dim)`` (with ``rank``), ``w_up`` ``(H, D, rank or dim)``, ``conv_weight``
    ``(H, D, conv_size)``, ``beta_weight`` ``(H, dim)``, ``beta_bias`` ``(H,)``, and with the gate ``gate_weight``
    ``(H, dim)``, ``gate_bias`` ``(H,)``; initialised as the ``nn.Linear``/``nn.Conv1d`` they stand for.

    Limits: the queries must be the last ``Tq`` keys (``Tq <= Tk``: self-attention, a KV cache; no
    cross-attention); the transforms run in float32 or wider; the gate's prefix sums in float64 (measured at 10^6
    tokens: the decay between two tokens off by about 1e-9, where float32 prefix sums are off by about 0.01).
    """

    family = "contextual"
    paper = "2505.16381"
    per_layer = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 rank: int | None = 32, conv_size: int = 3, forget_gate: bool = False,
                 chunk_size: int | None = None) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        for arg, value, low in (("rank", rank, 1), ("conv_size", conv_size, 0), ("chunk_size", chunk_size, 1)):
            if value is None and arg != "conv_size":
                continue
            check_int(value, f"path: {arg}", minimum=low,
                      hint="Use conv_size=0 to turn the short convolution off." if arg == "conv_size" else
                      "None means the default.")
        if not isinstance(forget_gate, bool):
            raise TypeError(f"path: forget_gate must be True or False; got {type(forget_gate).__name__} "
                            f"{forget_gate!r}.")
        self.rank, self.conv_size, self.forget_gate = rank, conv_size, forget_gate
        self.chunk_size = self.head_dim if chunk_size is None else chunk_size
        h, d = n_heads, self.head_dim
        width = dim if rank is None else rank
        if rank is not None:
            self.w_down = nn.Parameter(torch.empty(rank, dim).uniform_(-dim**-0.5, dim**-0.5))  # nn.Linear init
        else:
            self.register_parameter("w_down", None)
        self.w_up = nn.Parameter(torch.empty(h, d, width).uniform_(-width**-0.5, width**-0.5))
        if conv_size:
            self.conv_weight = nn.Parameter(torch.empty(h, d, conv_size).uniform_(-conv_size**-0.5,
                                                                                  conv_size**-0.5))
        else:
            self.register_parameter("conv_weight", None)
        self.beta_weight = nn.Parameter(torch.empty(h, dim).uniform_(-dim**-0.5, dim**-0.5))
        self.beta_bias = nn.Parameter(torch.empty(h).uniform_(-dim**-0.5, dim**-0.5))
        if forget_gate:
            self.gate_weight = nn.Parameter(torch.empty(h, dim).uniform_(-dim**-0.5, dim**-0.5))
            self.gate_bias = nn.Parameter(torch.empty(h).uniform_(-dim**-0.5, dim**-0.5))
        else:
            self.register_parameter("gate_weight", None)
            self.register_parameter("gate_bias", None)

    # -- per kv head weights ----------------------------------------------------------------------------------------
    def _group_mean(self, p: Tensor, kv_heads: int) -> Tensor:
        """A per-query-head parameter ``(H, ...)`` as ``(Hkv, ...)``: the mean of each kv head's group of slots."""
        if kv_heads == self.n_heads:
            return p
        return p.unflatten(0, (kv_heads, self.n_heads // kv_heads)).mean(1)

    def _kv_heads(self, layer: LayerView | None) -> int:
        kv = self.n_heads if layer is None else layer.n_kv_heads
        if not isinstance(kv, int) or kv <= 0 or self.n_heads % kv:
            raise ValueError(f"path: the layer has {kv} kv heads, which must divide n_heads={self.n_heads}.")
        return kv

    # -- hooks ------------------------------------------------------------------------------------------------------
    def features(self, x: Tensor, pos: Tensor, *, layer: LayerView | None) -> dict[str, Tensor]:
        """``u = W_up W_down x`` ``(B, Hkv, T, D)``, ``beta`` ``(B, Hkv, T, 1)`` [, ``log_f`` ``(B, H, T, 1)``].

        ``x`` is the layer's normed input ``(B, T, dim)``; ``pos`` is not read (PaTH orders tokens by index). The
        short convolution is not applied here: it reads earlier tokens, which a decode step has only in the cache
        (``terms`` applies it over every key's ``u``). ``beta`` and ``log_f`` are float32 (float64 for float64
        input); ``u`` keeps the dtype of ``x``.
        """
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"path: features() takes the layer's input (B, T, dim={self.dim}); got {got}.")
        if layer is not None and not isinstance(layer, LayerView):
            raise TypeError(f"path: layer must be a posenc.LayerView or None; got {type(layer).__name__}.")
        kv = self._kv_heads(layer)
        wide = torch.promote_types(x.dtype, torch.float32)
        z = x if self.w_down is None else x @ self.w_down.to(x.dtype).t()  # (B, T, rank|dim)
        w_up = self._group_mean(self.w_up, kv).to(x.dtype)  # (Hkv, D, rank|dim)
        u = torch.einsum("btr,gdr->bgtd", z, w_up)  # (B, Hkv, T, D)
        xw = x.to(wide)
        beta_logit = xw @ self._group_mean(self.beta_weight, kv).to(wide).t() + \
            self._group_mean(self.beta_bias, kv).to(wide)  # (B, T, Hkv)
        out = {"u": u, "beta": (2 * torch.sigmoid(beta_logit)).transpose(1, 2)[..., None]}  # (B, Hkv, T, 1)
        if self.forget_gate:
            gate = xw @ self.gate_weight.to(wide).t() + self.gate_bias.to(wide)  # (B, T, H)
            out["log_f"] = F.logsigmoid(gate).transpose(1, 2)[..., None]  # (B, H, T, 1)
        return out

    def _check_features(self, features, kv: int, keys: int, where: str) -> None:
        need = ("u", "beta", "log_f") if self.forget_gate else ("u", "beta")
        missing = [n for n in need if n not in features]
        if missing:
            raise ValueError(f"path: {where} needs the features {list(need)} of every key (missing {missing}); the "
                             f"encoding's features(x, pos, layer=...) hook makes them from the layer's input, and a "
                             f"bare posenc.attention call passes them as features=.")
        widths = {"u": (kv, self.head_dim), "beta": (kv, 1), "log_f": (self.n_heads, 1)}
        for name in need:
            f = features[name]
            heads, width = widths[name]
            if f.dim() != 4 or f.shape[1] != heads or f.shape[2] != keys or f.shape[3] != width:
                raise ValueError(f"path: features[{name!r}] must have shape (B|1, {heads}, {keys}, {width}) for "
                                 f"{kv} kv heads and {keys} keys; got {tuple(f.shape)}. The transforms act per kv "
                                 f"head: make the features with a LayerView whose n_kv_heads matches k.")

    def _transforms(self, features, attn_mask: Tensor | None, n_queries: int, n_keys: int,
                    dtype: torch.dtype) -> tuple[Tensor, Tensor, int]:
        """The origin -- how many leading keys carry spent transforms (``beta == 0``: a KV cache's), which need no
        chunk -- and the other keys' ``w`` ``(B|1, Hkv, Tk - origin, D)`` and ``beta`` ``(B|1, Hkv, Tk - origin,
        1)`` in ``dtype``. The convolution runs over those keys and the ``conv_size - 1`` before them only."""
        kv = features["u"].shape[1]
        beta = features["beta"]
        prefix = n_keys - n_queries
        origin = 0
        # The skip is exact in value, not in beta's gradient (d s / d beta_t at beta_t = 0 is not zero): only for a
        # beta that needs none, as a KV cache's (commit's zeros). One host sync per call with keys before the queries.
        if prefix > 0 and reads_values(beta) and not (torch.is_grad_enabled() and beta.requires_grad) \
                and not bool(beta[..., :prefix, :].any()):
            origin = prefix
        conv = None if self.conv_weight is None else self._group_mean(self.conv_weight, kv)
        lo = origin if conv is None else max(0, origin - self.conv_size + 1)  # the convolution's window
        reads = conv_reads(attn_mask, n_queries, n_keys, self.conv_size, start=lo)
        w = householder_vectors(features["u"][..., lo:, :].to(dtype), conv, reads)[..., origin - lo:, :]
        return w, beta[..., origin:, :].to(dtype), origin

    def terms(self, call: AttentionCall) -> PaTHTerms:
        """The blockwise PaTH scores of one call (``replaces_scores``): see the module docstring.

        Reads ``call.features`` (every key's ``u``, ``beta`` [, ``log_f``], cached first) and ``call.attn_mask``
        (where the short convolution stops). Per call: ``O(Tk * chunk * D)`` for the chunk transforms and the
        within-chunk scores; per block of rows ``O(rows * Tk * D)``.
        """
        q, k = call.q, call.k
        check_head_dim(self, q, k)
        h, tq, hkv, tk = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
        if tq > tk:
            raise ValueError(f"path: the queries must be the last Tq of the Tk keys (self-attention or a KV cache); "
                             f"got Tq={tq} > Tk={tk}. PaTH orders tokens by key index, so it cannot serve "
                             f"cross-attention.")
        self._check_features(call.features, hkv, tk, "attention")
        cd = compute_dtype(q)
        w, beta, origin = self._transforms(call.features, call.attn_mask, tq, tk, cd)
        n_rep = h // hkv
        span = tk - origin  # keys on the chunk grid
        size = max(1, min(self.chunk_size, span))
        chunks = -(-span // size)
        wg, bg = _grid(w, 0, chunks, size), _grid(beta, 0, chunks, size)  # (B|1, Hkv, N, C, D|1)
        kg = _grid(k[..., origin:, :].to(cd), 0, chunks, size)  # (B, Hkv, N, C, D)
        t, twb = ut_transform(wg, bg)  # (B|1, Hkv, N, C, C), (B|1, Hkv, N, C, D)
        wb = wg * bg
        a_k = t @ torch.tril(wb @ kg.transpose(-1, -2), -1)  # (B, Hkv, N, C, C): (t, j) moves k_j, t > j
        k_end = kg - a_k.transpose(-1, -2) @ wg  # every key moved to the end of its chunk

        # the queries on the grid: they sit at the last Tq key indices, chunks first_chunk .. N-1
        g0 = tk - tq - origin
        first_chunk = g0 // size
        lead = g0 - first_chunk * size
        qg = _grid(q.to(cd), lead, chunks - first_chunk, size)  # (B, H, n, C, D), zeros where no query sits
        wq, t_rep, twbq, kq, akq = (_repeat_heads(x[:, :, first_chunk:], n_rep) for x in (wg, t, twb, kg, a_k))
        qw = torch.tril(qg @ wq.transpose(-1, -2))  # (B, H, n, C, C): (i, t), t <= i
        q_start = qg - qw @ twbq  # every query moved back to the start of its chunk (through its own H)
        local = torch.tril(qg @ kq.transpose(-1, -2)) - qw @ akq  # (i, j): scores within the chunk, j <= i
        q_end = k_start = None
        if not call.causal:
            wbq = _repeat_heads(wb[:, :, first_chunk:], n_rep)
            a_q = t_rep @ torch.tril(wbq @ qg.transpose(-1, -2), -1)  # (t, i): moves q_i forward, t > i
            q_end = qg - a_q.transpose(-1, -2) @ wq  # every query moved to the end of its chunk
            kw = torch.tril(kg @ wg.transpose(-1, -2))  # (j, t), t <= j
            k_start = kg - kw @ twb  # every key moved back to the start of its chunk (through its own H)
            local = local + torch.triu(qg @ kq.transpose(-1, -2), 1) - \
                (_repeat_heads(kw[:, :, first_chunk:], n_rep) @ a_q).transpose(-1, -2)  # j > i
        c_q = c_k = None
        if self.forget_gate:
            c_k = torch.cumsum(call.features["log_f"].to(torch.float64), dim=2)  # (B|1, H, Tk, 1), float64
            c_q = c_k[:, :, tk - tq:]

        def queries(x: Tensor) -> Tensor:  # (B, H, n, C, X) -> (B, H, Tq, X)
            return x.flatten(-3, -2)[..., lead:lead + tq, :]

        def keys(x: Tensor | None) -> Tensor | None:  # (B, Hkv, N, C, X) -> (B, Hkv, Tk - origin, X)
            return None if x is None else x.flatten(-3, -2)[..., :span, :]

        return PaTHTerms(q_len=tq, k_len=tk, origin=origin, chunk=size, causal=call.causal,
                         q_start=queries(q_start), local=queries(local), k_end=keys(k_end), w=keys(wg),
                         twb=keys(twb), q_end=None if q_end is None else queries(q_end), k_start=keys(k_start),
                         c_q=c_q, c_k=c_k)

    def commit(self, k: Tensor, v: Tensor, features, *, new: int,
               attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Every key moved to the cache's last token, ``H_{T-1} ... H_{j+1} k_j``, and every ``beta`` set to 0.

        The transforms of the cached keys were applied by earlier commits (their ``beta`` is 0), so only this call's
        ``new`` tokens' transforms are applied: ``O(T * D * new)``. ``attn_mask`` is the call's (where the short
        convolution of the new tokens stops, as in :meth:`terms`).
        """
        n = k.shape[2]
        self._check_features(features, k.shape[1], n, "commit")
        cd = compute_dtype(k)
        w, beta, origin = self._transforms(features, attn_mask, new, n, cd)
        span = n - origin
        size = max(1, min(self.chunk_size, span))
        chunks = -(-span // size)
        wg, bg = _grid(w, 0, chunks, size), _grid(beta, 0, chunks, size)
        kg = _grid(k[..., origin:, :].to(cd), 0, chunks, size)
        t, twb = ut_transform(wg, bg)
        a_k = t @ torch.tril((wg * bg) @ kg.transpose(-1, -2), -1)
        k_end = kg - a_k.transpose(-1, -2) @ wg  # (B, Hkv, N, C, D): each key moved to the end of its chunk
        moved = k[..., :origin, :].to(cd)  # keys done so far, moved to the end of the last chunk processed
        for c in range(chunks):  # r <- H_e ... H_s r = r - W^T (T diag(beta) W r), as rows
            moved = moved - (moved @ twb[:, :, c].transpose(-1, -2)) @ wg[:, :, c]
            moved = torch.cat((moved, k_end[:, :, c].expand(moved.shape[0], -1, -1, -1)), dim=2)
        kept = dict(features)
        kept["beta"] = torch.zeros_like(features["beta"])  # spent: the cached keys carry them now
        return moved[..., :n, :].to(k.dtype), v, kept

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, rank={self.rank}, conv_size={self.conv_size}, "
                f"forget_gate={self.forget_gate}, chunk_size={self.chunk_size}")


class PaTHTerms(AttentionTerms):
    """PaTH's scores for one call, formed per block of query rows (``replaces_scores``).

    Per-call tensors (``terms`` made them): ``q_start`` ``(B, H, Tq, D)`` the queries moved back to the start of
    their chunk, ``local`` ``(B, H, Tq, C)`` their scores within their chunk, ``k_end`` ``(B, Hkv, Tk - origin, D)``
    the keys on the chunk grid moved to the end of their chunk, ``w`` and ``twb`` ``(B|1, Hkv, Tk - origin, D)``
    each chunk's WY factors (``H_e ... H_s = I - w^T twb``); bidirectional calls add ``q_end`` and ``k_start``; the
    gate ``c_q`` ``(B|1, H, Tq, 1)``, ``c_k`` ``(B|1, H, Tk, 1)`` (float64). The key-side ones start at key
    ``origin`` (the spent keys before it need none): ``blk.key_rows`` cuts them at the block's ``keys``, past every
    chunk the block reads, and the blocks index them from ``origin``.
    """

    replaces_scores = True
    # measured-ish: the stacked chunk scores, the assembled rows, the gate in float64 (2), logits, probabilities
    pair_tensors = 8
    NAMES = ("q_start", "local", "k_end", "w", "twb", "q_end", "k_start", "c_q", "c_k")

    def __init__(self, *, q_len: int, k_len: int, origin: int, chunk: int, causal: bool, q_start: Tensor,
                 local: Tensor, k_end: Tensor, w: Tensor, twb: Tensor, q_end: Tensor | None,
                 k_start: Tensor | None, c_q: Tensor | None, c_k: Tensor | None) -> None:
        self.q_len, self.k_len, self.origin, self.chunk, self.causal = q_len, k_len, origin, chunk, causal
        self.q_start, self.local, self.k_end, self.w, self.twb = q_start, local, k_end, w, twb
        self.q_end, self.k_start, self.c_q, self.c_k = q_end, k_start, c_q, c_k
        self.call_tensors = tuple(n for n in self.NAMES if getattr(self, n) is not None)

    def logits(self, scores: Tensor | None, blk: ScoreBlock) -> Tensor:
        """The block's logits ``(B, H, rows, keys)``: PaTH scores times ``scale`` [+ the gate's decay].

        The rows are cut by query chunk (``n_sub`` sub-blocks of up to ``chunk`` rows, which share each step's
        chunk of keys); every tensor larger than ``(B, H, n_sub * chunk, D)`` holds only the block's own rows.
        Chunked tensors are laid out chunk first, ``(chunks, B, H, C, X)`` and contiguous, so a run of chunks is
        one batch of matrix products without a copy.
        """
        rows, keys, size, origin = blk.rows, blk.keys, self.chunk, self.origin
        if rows == 0:
            return blk.q.new_zeros(*blk.q.shape[:2], 0, keys)
        batch, heads = blk.q.shape[:2]
        g_first = self.k_len - self.q_len + blk.start - origin  # grid index of the block's first row
        c_lo, c_hi = g_first // size, (g_first + rows - 1) // size
        n_sub = c_hi - c_lo + 1  # query chunks the block spans: sub-block s is chunk c_lo + s
        lead = g_first - c_lo * size
        span = [(max(lead - s * size, 0), min(lead + rows - s * size, size)) for s in range(n_sub)]  # own rows

        def own_rows(x: Tensor, s: int) -> Tensor:  # (B, H, C, X) -> sub-block s's rows of the block
            lo, hi = span[s]
            return x if (lo, hi) == (0, size) else x[:, :, lo:hi]

        def rows_grid(x: Tensor) -> Tensor:  # (B, H, Tq, X) -> (n_sub, B, H, C, X), zero rows around the block's
            x = _grid(blk.query_rows(x), lead, n_sub, size)
            return x.expand(batch, heads, *x.shape[2:]).permute(2, 0, 1, 3, 4).contiguous()

        def chunks(x: Tensor, start: int, stop: int) -> Tensor:  # (B|1, Hkv, Tk, X) -> (stop - start, B, H, C, X)
            x = blk.key_rows(x)[..., start * size:stop * size, :].unflatten(-2, (stop - start, size))
            return x.expand(batch, heads, *x.shape[2:]).permute(2, 0, 1, 3, 4).contiguous()

        # the causal direction: walk each sub-block's rows back over the earlier chunks, one chunk per step; at step
        # d sub-block s reaches chunk c_lo + s - d, so the sub-blocks still walking (s >= d - c_lo) read a
        # contiguous run of chunks, and a sub-block that reached chunk 0 leaves the walk
        parts: list[list[Tensor]] = [[] for _ in range(n_sub)]  # per sub-block, its rows' scores chunk by chunk
        r = rows_grid(self.q_start)  # (n_sub, B, H, C, D): the rows moved back to the start of their chunk
        done = []  # the walks that reached the grid's start (their rows moved back to origin), in order
        first = 0  # the first sub-block still walking
        if c_hi:
            k_end, w, twb = (chunks(x, 0, c_hi) for x in (self.k_end, self.w, self.twb))  # chunks 0 .. c_hi - 1
            for step in range(1, c_hi + 1):
                if step - c_lo > first:
                    done.append(r[:step - c_lo - first])
                    r, first = r[step - c_lo - first:], step - c_lo
                reach = slice(c_lo + first - step, c_hi - step + 1)  # the chunks the walking sub-blocks reach
                piece = r @ k_end[reach].transpose(-1, -2)  # (walking, B, H, C, C)
                for s, x in enumerate(piece.unbind(0), start=first):  # unbind: one gradient buffer per step
                    parts[s].append(own_rows(x, s))
                r = r - (r @ w[reach].transpose(-1, -2)) @ twb[reach]  # r^T (H_e ... H_s) of that chunk
        done.append(r)
        before = None
        if origin:  # the keys before origin carry spent (identity) transforms: the walks have reached them
            at_origin = torch.cat(done) if len(done) > 1 else done[0]  # (n_sub, B, H, C, D)
            at_origin = at_origin.permute(1, 2, 0, 3, 4).flatten(2, 3)  # (B, H, n_sub * C, D)
            before = (at_origin @ blk.k[:, :, :origin].transpose(-1, -2)).unflatten(2, (n_sub, size)).unbind(2)
        out = []
        for s, x in enumerate(rows_grid(self.local).unbind(0)):
            row = parts[s][::-1]  # chunk order: 0 .. chunk - 1
            if before is not None:
                row.insert(0, own_rows(before[s], s))
            row.append(own_rows(x, s))
            out.append(row)
        if not self.causal:
            self._ahead(blk, out, rows_grid, chunks, own_rows, c_lo)
        logits = torch.cat([_fit(torch.cat(row, dim=-1), keys) for row in out], dim=-2) * blk.scale
        if self.c_q is not None:  # (B, H, rows, keys); future keys of a causal block are zero here, then masked
            decay = -(blk.query_rows(self.c_q) - blk.key_rows(self.c_k).transpose(-1, -2)).abs()  # float64
            logits = logits + decay.to(logits.dtype)
        return logits

    def _ahead(self, blk: ScoreBlock, out: list[list[Tensor]], rows_grid, chunks, own_rows, c_lo: int) -> None:
        """Bidirectional: append to each sub-block's row the scores of the later chunks, walking its rows forward.

        At step d sub-block s reaches chunk c_lo + s + d; the walking ones (those not past the last chunk) read a
        contiguous run of chunks. The last chunk may be partial: only its keys are read (no walk goes past it).
        """
        size, origin, n_sub = self.chunk, self.origin, len(out)
        width = blk.keys - origin
        n_full, n_chunks = width // size, -(-width // size)
        if n_chunks - c_lo <= 1:
            return
        first = c_lo + 1  # the chunks after the block's first query chunk
        k_start, w, twb = (chunks(x, first, n_full) for x in (self.k_start, self.w, self.twb))  # full ones
        k_tail = blk.key_rows(self.k_start)[..., n_full * size:, :]  # (B, H, width % C, D): partial
        r = rows_grid(self.q_end)  # (n_sub, B, H, C, D): the rows moved to the end of their chunk
        for step in range(1, n_chunks - c_lo):
            walking = min(n_sub, n_chunks - c_lo - step)  # sub-blocks 0 .. walking - 1 reach a chunk
            r = r[:walking]
            start = c_lo + step - first  # index in the full chunks (from chunk c_lo + 1) of sub-block 0's reach
            full = min(walking, n_full - c_lo - step)  # how many of them reach a full chunk
            if full > 0:
                piece = r[:full] @ k_start[start:start + full].transpose(-1, -2)  # (full, B, H, C, C)
                for s, x in enumerate(piece.unbind(0)):
                    out[s].append(own_rows(x, s))
            if full < walking:  # the last walking sub-block reaches the partial last chunk
                s = walking - 1
                out[s].append(own_rows(r[s] @ k_tail.transpose(-1, -2), s))
            if full > 0:  # r^T (H_s ... H_e): on to the next chunk (nothing follows the last one)
                moved = r[:full] - (r[:full] @ twb[start:start + full].transpose(-1, -2)) @ w[start:start + full]
                r = torch.cat((moved, r[full:])) if full < walking else moved
