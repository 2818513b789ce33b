"""DeBERTa's disentangled attention (He et al., ICLR 2021, arXiv 2006.03654), v2/v3 style: log buckets, one table.

For query ``i`` and key ``j`` of one head (``d`` = head dim), the paper's score (its eq. 4) is

    A_ij = [ Q^c_i . K^c_j  +  Q^c_i . K^r_{delta(i,j)}  +  K^c_j . Q^r_{delta'(i,j)} ] / sqrt(3d)
             content          content-to-position (c2p)     position-to-content (p2c)

with ``Q^c = W_q x``, ``K^c = W_k x`` the layer's own content projections and ``K^r = W_k R``, ``Q^r = W_q R`` the
*same* projections applied to a relative-position table ``R`` ``(2S, dim)`` (``share_att_key=True``, DeBERTa-v2/v3),
layer-normalised once and shared by every layer of the stack. The distance index is

    delta(i, j) = clamp(bucket(p_i - p_j) + S, 0, 2S - 1)

where ``bucket`` is the identity for ``|r| <= S/2`` and logarithmic beyond (DeBERTa-v2's ``make_log_bucket_position``
with ``position_buckets = S`` and ``max_relative_positions``: ``sign(r) * (ceil(log(|r| / mid) / log((M - 1) / mid) *
(mid - 1)) + mid)``, ``mid = S // 2``), and the score is scaled by ``1 / sqrt(d * (1 + number of position terms))``.

**Which index p2c uses.** The paper writes ``delta'(i, j) = delta(j, i)``, the key-to-query distance ``p_j - p_i``
(eq. 4 and Algorithm 1, line 16), and says so in words. The released code -- Microsoft's ``DeBERTa`` repository and
Hugging Face's ``DebertaV2`` alike, hence every released checkpoint -- gathers its ``-r`` index on a key-major product
and transposes it, so the two sign flips cancel and p2c reads ``Q^r_{delta(i, j)}``, the *same* row as c2p. Both are
offered: ``p2c_convention="released"`` (the default: equal to the checkpoints) and ``"paper"``
(:func:`deberta_p2c_index`). Bucketing is odd (``bucket(-r) = -bucket(r)``), so the two differ by which half of the
table p2c reads.

Computation (an attention term, :mod:`posenc.terms`). Per call, :meth:`DeBERTa.terms` projects the rows of ``R``
that the call's distances reach (``U <= min(2S, distance span + 1)`` rows: a short sequence never touches the far
buckets) with the layer's ``W_k`` and ``W_q`` (``call.layer``) and forms ``k_j . Q^r_u`` for every key and those rows,
``(B, H, Tk, U_p)``: the p2c products every query block shares, as the reference implementations do. Each block of
query rows then forms ``q_i . K^r_u`` ``(B, H, rows, U_c)`` and gathers both terms by index. Extra memory per call is
``O(B H Tk U)`` (at most ``2S = 512`` wide by default, never ``Tq x Tk``): the products, and on ``chunked`` their
gradient plus one block's transient gradient of them (a gather's backward fills a tensor of its input's size), beside
``O(B H rows (Tk + U))`` per block. Measured on CPU (T = 2048, H = 4, D = 64, causal, forward + backward, 1 thread):
``chunked`` 61 MiB above the input (8 MiB of it output and gradients) in 8.0 s, ``dense`` 453 MiB in 2.6 s.

Shapes: ``q`` ``(B, H, Tq, D)``, ``k``/``v`` ``(B, Hkv, Tk, D)``, positions int64 ``(T,)`` or ``(B, T)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posenc._checks import check_int, check_number, reads_values
from posenc.base import PositionalEncoding, register
from posenc.terms import AttentionCall, AttentionTerms, ScoreBlock, check_head_dim, compute_dtype, positions_2d

__all__ = ["DeBERTa", "deberta_bucket_thresholds", "deberta_c2p_index", "deberta_log_bucket", "deberta_p2c_index"]

POS_ATT_TYPES = ("c2p", "p2c")
P2C_CONVENTIONS = ("released", "paper")
_NO_LIMIT = 2**62  # a distance no int64 position difference that matters reaches


def _bucket_step(a: int, mid: int, log_base: float) -> int:
    """``ceil(log(a / mid) / log_base * (mid - 1))``, DeBERTa-v2's log-bucket offset for a distance ``a > mid``.

    Evaluated in Python floats (IEEE float64), exactly as the authors' numpy ``make_log_bucket_position`` does.
    """
    return math.ceil(math.log(a / mid) / log_base * (mid - 1))


def deberta_bucket_thresholds(position_buckets: int, max_relative_positions: int) -> list[int]:
    """The largest distance whose log bucket is ``mid + n``, for ``n = 0 .. S - mid``: ``S - mid + 1`` ints.

    ``bucket(a)`` for a distance ``a > mid`` is ``mid + #{n : threshold[n] < a}`` (:func:`deberta_log_bucket`), so a
    pair's bucket costs one integer search instead of a float64 logarithm. Each threshold is found from the closed
    form ``mid * ((M - 1) / mid) ** (n / (mid - 1))`` and then corrected against the float64 formula itself, so the
    buckets are those of the float64 formula bit for bit (including the distances where the closed form is an integer,
    such as ``M - 1``).

    Args:
        position_buckets: ``S`` (>= 2); ``mid = S // 2``.
        max_relative_positions: ``M`` (> ``mid + 1``): the distance that reaches bucket ``2 mid - 1``.
    """
    mid = position_buckets // 2
    log_base = math.log((max_relative_positions - 1) / mid)
    thresholds = []
    for n in range(position_buckets - mid + 1):
        if mid == 1:  # (mid - 1) == 0: every distance past mid is bucket mid
            thresholds.append(_NO_LIMIT)
            continue
        exponent = math.log(mid) + n * log_base / (mid - 1)
        a = _NO_LIMIT if exponent >= math.log(_NO_LIMIT) else max(mid, math.floor(math.exp(exponent)))
        while a > mid and _bucket_step(a, mid, log_base) > n:  # the closed form rounded up past the threshold
            a -= 1
        while a < _NO_LIMIT and _bucket_step(a + 1, mid, log_base) <= n:  # ... or down below it
            a += 1
        thresholds.append(a)
    return thresholds


def deberta_log_bucket(rel: Tensor, thresholds: Tensor | None, *, position_buckets: int,
                       max_relative_positions: int) -> Tensor:
    """Signed buckets of relative distances, as DeBERTa-v2's ``make_log_bucket_position``, capped at ``+-S``.

    Args:
        rel: int64 distances ``p_i - p_j``, any shape.
        thresholds: int64 ``(S - mid + 1,)`` from :func:`deberta_bucket_thresholds`, on ``rel``'s device; ``None``
            when ``position_buckets <= 0`` (no log buckets: distances are only clipped to ``+-M``).
        position_buckets, max_relative_positions: ``S`` and ``M``.

    Returns:
        int64, the shape of ``rel``, in ``[-S, S]`` (``S = M`` without log buckets). Buckets past ``+-S`` select the
        table's edge rows anyway, so they are capped there (which keeps the values bounded at any distance).
    """
    if position_buckets <= 0:
        return rel.clamp(-max_relative_positions, max_relative_positions)
    mid = position_buckets // 2
    mag = rel.abs()
    logarithmic = torch.searchsorted(thresholds, mag) + mid  # mid + #{thresholds < |r|}
    mag = torch.where(mag <= mid, mag, logarithmic).clamp_(max=position_buckets)
    return torch.where(rel < 0, -mag, mag)


def deberta_c2p_index(bucket: Tensor, span: int) -> Tensor:
    """Row of the relative table content-to-position reads for pairs of signed ``bucket`` ``(p_i - p_j)``."""
    return (bucket + span).clamp_(0, 2 * span - 1)


def deberta_p2c_index(bucket: Tensor, span: int, convention: str) -> Tensor:
    """Row position-to-content reads: ``"released"`` the c2p row (the checkpoints' code), ``"paper"`` ``delta(j, i)``.

    Args:
        bucket: signed buckets of ``p_i - p_j`` (query minus key), int64.
        span: ``S``, half the table's rows.
        convention: ``"released"`` or ``"paper"`` (module docstring).
    """
    return deberta_c2p_index(bucket if convention == "released" else -bucket, span)


@register("deberta")
class DeBERTa(PositionalEncoding):
    """DeBERTa disentangled attention (He et al. 2021, arXiv 2006.03654): c2p and p2c terms over a log-bucket table.

    ``A_ij = [q_i . k_j + q_i . (W_k R)_{delta(i,j)} + k_j . (W_q R)_{delta'(i,j)}] * scale / sqrt(1 + n_terms)``
    with ``R`` the layer-normalised relative table ``(2S, dim)``, ``W_q``/``W_k`` the projections of the layer the call
    serves (``call.layer``: ``reads_layer = True``), ``delta`` the DeBERTa-v2 log buckets of ``p_i - p_j`` and
    ``scale = 1/sqrt(d)`` by default, so the default score scale is the paper's ``1/sqrt(3d)``. See the module
    docstring for the formula, the p2c index conventions and the memory.

    Sharing: one table (and its LayerNorm) serves every layer of a stack, as in DeBERTa-v2/v3 (``per_layer=False``);
    each layer still projects it with its own ``W_q``/``W_k``. ``per_layer=True`` gives every layer a table of its own.

    Args:
        pos_att_type: the position terms, any non-empty subset of ``("c2p", "p2c")`` (a tuple, or HF's config string
            ``"c2p|p2c"``); the scale divides by ``sqrt(1 + len(pos_att_type))``, as in the reference code.
        position_buckets: ``S``: distances up to ``S // 2`` keep their own bucket, longer ones share log buckets; the
            table has ``2S`` rows. ``0`` turns log buckets off (distances clipped to ``+-max_relative_positions``,
            a table of ``2 max_relative_positions`` rows). DeBERTa-v2/v3 use 256.
        max_relative_positions: ``M``: the distance that reaches the last log bucket (``2 (S//2) - 1``); farther
            pairs share the edge rows. DeBERTa-v2/v3 use 512 (their ``max_position_embeddings``).
        share_att_key: project ``R`` with the layer's ``W_q``/``W_k`` (``True``, v2/v3). ``False`` gives the encoding
            its own position projections ``pos_key_proj``/``pos_query_proj`` (``dim -> H*D``, with bias, as DeBERTa v1
            and ``share_att_key=False`` configs); they are per stack unless ``per_layer=True`` (HF has one pair per
            layer beside one shared table: load such a checkpoint with ``per_layer=True``, the table copied into every
            layer; training then unties the copies).
        p2c_convention: ``"released"`` (default, what every checkpoint was trained with) or ``"paper"``.
        layer_norm: layer-normalise ``R`` before projecting it (``norm_rel_ebd="layer_norm"`` of v2/v3 configs).
        layer_norm_eps: its epsilon (DeBERTa-v2's ``layer_norm_eps`` is 1e-7).
        per_layer: one encoding (table) per attention layer instead of one per stack.
        init_std: normal initialisation of ``R`` (0.02, HF's ``initializer_range``).

    Parameters: ``rel_embeddings`` ``(2S, dim)``; ``norm`` (``LayerNorm(dim)``) with ``layer_norm``; with
    ``share_att_key=False`` also ``pos_key_proj``/``pos_query_proj`` (``Linear(dim, H*D)``), each only when its
    term is used.

    Limits: bidirectional and causal; any positions (distances are bucketed and clipped, ``extrapolates = True``).
    Buckets are exact integers (:func:`deberta_bucket_thresholds`); the terms are formed in the compute dtype (float32
    for half inputs). KV cache: nothing is cached beside k/v; each call projects the table and forms ``k . Q^r`` for
    every key again, so a decoding step costs ``O(Tk * U * D)`` per layer for p2c (``U <= 2S`` table rows).
    Under ``torch.compile`` the whole table is projected (choosing the rows a call reaches needs their values).
    """

    family = "relative"
    paper = "2006.03654"
    extrapolates = True
    reads_layer = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 pos_att_type: tuple[str, ...] | str = ("c2p", "p2c"), position_buckets: int = 256,
                 max_relative_positions: int = 512, share_att_key: bool = True, p2c_convention: str = "released",
                 layer_norm: bool = True, layer_norm_eps: float = 1e-7, per_layer: bool = False,
                 init_std: float = 0.02) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        terms = _check_pos_att_type(pos_att_type)
        for arg, value in (("position_buckets", position_buckets), ("max_relative_positions", max_relative_positions)):
            check_int(value, f"deberta: {arg}")
        if position_buckets < 0 or position_buckets == 1:
            raise ValueError(f"deberta: position_buckets must be 0 (no log buckets) or >= 2; got {position_buckets}. "
                             f"DeBERTa-v2/v3 use 256.")
        if max_relative_positions < 1:
            raise ValueError(f"deberta: max_relative_positions must be >= 1; got {max_relative_positions}. "
                             f"DeBERTa-v2/v3 use 512.")
        if position_buckets and max_relative_positions - 1 <= position_buckets // 2:
            raise ValueError(f"deberta: log buckets need max_relative_positions - 1 > position_buckets // 2 (their "
                             f"base is (M - 1) / (S // 2)); got max_relative_positions={max_relative_positions}, "
                             f"position_buckets={position_buckets}. Raise max_relative_positions, or pass "
                             f"position_buckets=0 for plain clipping.")
        for arg, value in (("share_att_key", share_att_key), ("layer_norm", layer_norm), ("per_layer", per_layer)):
            if not isinstance(value, bool):
                raise TypeError(f"deberta: {arg} must be True or False; got {type(value).__name__} {value!r}.")
        if p2c_convention not in P2C_CONVENTIONS:
            raise ValueError(f"deberta: p2c_convention must be one of {P2C_CONVENTIONS}; got {p2c_convention!r}. "
                             f"'released' is what DeBERTa checkpoints were trained with, 'paper' the paper's eq. 4.")
        for arg, value in (("layer_norm_eps", layer_norm_eps), ("init_std", init_std)):
            if arg == "layer_norm_eps":
                check_number(value, f"deberta: {arg}", above=0)
            else:
                check_number(value, f"deberta: {arg}", minimum=0)
        self.pos_att_type = terms
        self.position_buckets = position_buckets
        self.max_relative_positions = max_relative_positions
        self.share_att_key = share_att_key
        self.p2c_convention = p2c_convention
        self.per_layer = per_layer  # an instance choice, read by the model like the class attribute
        self.reads_layer = share_att_key  # own position projections read nothing of the layer
        self.span = position_buckets if position_buckets > 0 else max_relative_positions  # S; the table has 2S rows
        self.rel_embeddings = nn.Parameter(torch.randn(2 * self.span, dim) * init_std)  # (2S, dim) R
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps) if layer_norm else None
        width = n_heads * self.head_dim
        self.pos_key_proj = nn.Linear(dim, width) if not share_att_key and "c2p" in terms else None
        self.pos_query_proj = nn.Linear(dim, width) if not share_att_key and "p2c" in terms else None
        thresholds = deberta_bucket_thresholds(position_buckets, max_relative_positions) if position_buckets else []
        # int64 (S - mid + 1,): found once in Python floats; a buffer so it follows the module's device
        self.register_buffer("bucket_thresholds", torch.tensor(thresholds, dtype=torch.long), persistent=False)

    @property
    def layer_norm(self) -> bool:
        return self.norm is not None

    @property
    def score_factor(self) -> int:
        """``1 + len(pos_att_type)``: the score scale is ``scale / sqrt(score_factor)``."""
        return 1 + len(self.pos_att_type)

    def buckets(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Signed buckets of ``q_pos[i] - k_pos[j]``: int64 ``(B|1, Tq, Tk)`` in ``[-S, S]``."""
        rel = positions_2d(q_pos)[:, :, None] - positions_2d(k_pos)[:, None, :]  # (B|1, Tq, Tk) p_i - p_j
        return deberta_log_bucket(rel, self.bucket_thresholds, position_buckets=self.position_buckets,
                                  max_relative_positions=self.max_relative_positions)

    def relative_table(self, rows: slice = slice(None)) -> Tensor:
        """Rows ``rows`` of the (layer-normalised) relative table ``R``: ``(U, dim)``."""
        r = self.rel_embeddings[rows]
        return r if self.norm is None else self.norm(r)

    def terms(self, call: AttentionCall) -> DeBERTaTerms:
        """The c2p and p2c terms of one call; the whole score becomes ``(q.k + c2p + p2c) * scale / sqrt(factor)``.

        Args:
            call: ``q`` ``(B, H, Tq, D)``; ``k``, ``v`` ``(B, Hkv, Tk, D)``; positions ``(T,)`` or ``(B, T)``;
                ``scale`` is the content scale of ordinary attention (``1 / sqrt(D)`` by default), which DeBERTa
                divides by ``sqrt(1 + len(pos_att_type))`` for all three terms; ``layer`` the
                :class:`~posenc.LayerView` whose ``project_q``/``project_k`` project the table (``share_att_key``).
        """
        q, k = call.q, call.k
        check_head_dim(self, q, k)
        layer = call.layer
        if self.share_att_key and (layer is None or layer.project_q is None or layer.project_k is None):
            raise ValueError("deberta: projects its relative table with the layer's own W_q and W_k "
                             "(share_att_key=True), but the call's LayerView has no project_q/project_k; pass "
                             "layer=posenc.LayerView(..., project_q=..., project_k=...) (a posenc.Transformer passes "
                             "its own), or build the encoding with share_att_key=False.")
        ct = compute_dtype(q)
        heads, kv_heads = q.shape[1], k.shape[1]
        c2p_rows = p2c_rows = slice(0, 2 * self.span)
        # only the table rows the call's distances reach: one host sync
        if reads_values(call.q_pos) and reads_values(call.k_pos):
            c2p_rows, p2c_rows = self._rows_reached(call.q_pos, call.k_pos)
        kr = qr = kq = None
        if "c2p" in self.pos_att_type:
            kr = self._project("k", c2p_rows, layer, kv_heads if self.share_att_key else heads)  # (U_c, Hkv|H, D)
            kr = kr.to(ct).permute(1, 0, 2).unsqueeze(0)  # (1, Hkv|H, U_c, D)
            if kr.shape[1] != heads:  # each query head reads its kv group's projection, as its keys
                kr = kr.repeat_interleave(heads // kr.shape[1], dim=1)  # (1, H, U_c, D)
        if "p2c" in self.pos_att_type:
            qr = self._project("q", p2c_rows, layer, heads).to(ct).permute(1, 0, 2)  # (H, U_p, D)
            b, _, tk, d = k.shape
            grouped = k.to(ct)[:, :, None]  # (B, Hkv, 1, Tk, D): every query head of a kv group shares its keys
            kq = grouped @ qr.reshape(kv_heads, heads // kv_heads, -1, d).transpose(-2, -1)  # (B, Hkv, n_rep, Tk, U_p)
            kq = kq.reshape(b, heads, tk, kq.shape[-1])  # (B, H, Tk, U_p): k_j . Q^r_u for every key and reached row
        return DeBERTaTerms(self, kr, kq, c2p_rows.start, p2c_rows.start)

    def _project(self, which: str, rows: slice, layer, heads: int) -> Tensor:
        """``W R`` for the table rows ``rows``, by the layer's (or the encoding's own) projection: ``(U, heads, D)``."""
        r = self.relative_table(rows)  # (U, dim)
        if self.share_att_key:
            out = (layer.project_k if which == "k" else layer.project_q)(r)
        else:
            out = (self.pos_key_proj if which == "k" else self.pos_query_proj)(r).unflatten(-1, (heads, -1))
        if out.shape != (r.shape[0], heads, self.head_dim):
            raise ValueError(f"deberta: the layer's project_{which} must map (..., dim) to (..., {heads}, "
                             f"{self.head_dim}) (heads of the call's {'keys' if which == 'k' else 'queries'}, "
                             f"head_dim); it gave {tuple(out.shape)} for {tuple(r.shape)}.")
        return out

    def _rows_reached(self, q_pos: Tensor, k_pos: Tensor) -> tuple[slice, slice]:
        """The table rows c2p and p2c read in this call: contiguous ranges (the buckets are monotone in ``p_i - p_j``).

        One host sync for four extremes; the rows of the extreme distances bound every pair's row.
        """
        if q_pos.numel() == 0 or k_pos.numel() == 0:
            return slice(0, 1), slice(0, 1)
        ext = torch.stack((q_pos.min() - k_pos.max(), q_pos.max() - k_pos.min()))  # (2,) smallest, largest p_i - p_j
        b = self.buckets(ext, torch.zeros(1, dtype=ext.dtype, device=ext.device)).flatten()  # (2,) their buckets
        c2p = deberta_c2p_index(b, self.span)
        p2c = deberta_p2c_index(b, self.span, self.p2c_convention)
        lo_c, hi_c, lo_p, hi_p = torch.stack((c2p.min(), c2p.max(), p2c.min(), p2c.max())).tolist()
        return slice(lo_c, hi_c + 1), slice(lo_p, hi_p + 1)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, pos_att_type={self.pos_att_type}, position_buckets={self.position_buckets}, "
                f"max_relative_positions={self.max_relative_positions}, share_att_key={self.share_att_key}, "
                f"p2c_convention={self.p2c_convention!r}, layer_norm={self.layer_norm}, per_layer={self.per_layer}")


def _check_pos_att_type(value) -> tuple[str, ...]:
    """``("c2p", "p2c")``-like tuple from a tuple/list of names or HF's ``"c2p|p2c"`` string; raises otherwise."""
    names = value.lower().split("|") if isinstance(value, str) else value
    if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"deberta: pos_att_type must be a tuple of names from {POS_ATT_TYPES} (or 'c2p|p2c'); got "
                        f"{type(value).__name__} {value!r}.")
    names = tuple(n.strip() for n in names)
    unknown = [n for n in names if n not in POS_ATT_TYPES]
    if unknown or not names or len(set(names)) != len(names):
        hint = " ('p2p' is not supported: HF's DeBERTa ignores it too)" if "p2p" in unknown else ""
        raise ValueError(f"deberta: pos_att_type must be a non-empty subset of {POS_ATT_TYPES} without repeats; got "
                         f"{value!r}{hint}.")
    return tuple(n for n in POS_ATT_TYPES if n in names)  # canonical order


class DeBERTaTerms(AttentionTerms):
    """DeBERTa's c2p and p2c logit terms for one call; see :class:`DeBERTa`.

    ``kr`` ``(1, H, U_c, D)`` are the projected table rows c2p reads (from row ``c2p_start`` of the table), ``kq``
    ``(B, H, Tk, U_p)`` the products ``k_j . Q^r_u`` p2c reads (from row ``p2c_start``); ``None`` for a term not used.
    """

    pair_tensors = 12  # estimated: scores, int64 buckets and indices (twice each), gathered terms, sum, probs, grads
    call_tensors = ("kr", "kq")  # formed once per call from the table, the layer's W_q/W_k and k (per object: those
    # of the terms used)

    def __init__(self, pe: DeBERTa, kr: Tensor | None, kq: Tensor | None, c2p_start: int, p2c_start: int) -> None:
        self.pe = pe
        self.kr = kr  # (1, H, U_c, D) or None
        self.kq = kq  # (B, H, Tk, U_p) or None
        self.c2p_start, self.p2c_start = c2p_start, p2c_start
        self.call_tensors = tuple(n for n in ("kr", "kq") if getattr(self, n) is not None)  # a term may be off
        self.inv_sqrt_factor = 1.0 / math.sqrt(pe.score_factor)

    def logits(self, scores: Tensor, blk: ScoreBlock) -> Tensor:
        pe = self.pe
        bucket = pe.buckets(blk.q_pos, blk.k_pos)  # (B|1, rows, keys)
        b, h, rows, keys = scores.shape
        position = None
        if self.kr is not None:
            per_row = blk.q @ self.kr.transpose(-2, -1)  # (B, H, rows, U_c): q_i . K^r_u
            index = deberta_c2p_index(bucket, pe.span) - self.c2p_start  # (B|1, rows, keys)
            position = per_row.gather(-1, index[:, None].expand(b, h, rows, keys))
        if self.kq is not None:
            per_key = blk.key_rows(self.kq)  # (B, H, keys, U_p): k_j . Q^r_u
            index = deberta_p2c_index(bucket, pe.span, pe.p2c_convention) - self.p2c_start  # (B|1, rows, keys)
            p2c = per_key.gather(-1, index.transpose(-2, -1)[:, None].expand(b, h, keys, rows)).transpose(-2, -1)
            position = p2c if position is None else position + p2c
        return (scores + position * blk.scale) * self.inv_sqrt_factor  # (B, H, rows, keys)
