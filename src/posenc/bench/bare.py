"""The bare-PyTorch ceiling: posenc's decoder written in the fewest lines, for the benchmarks to measure against.

:class:`BareDecoder` is the architecture of :class:`posenc.Transformer` (``kind="decoder"``) with nothing of posenc
in it, nanoGPT style: an embedding times ``sqrt(dim)``, pre-norm blocks of bias-free ``nn.Linear`` q/k/v/o
projections and a GELU feed-forward, :func:`torch.nn.functional.scaled_dot_product_attention` with ``is_causal``, a
final norm and an untied head. Its parameters have the same names, shapes and count as posenc's, so
:meth:`BareDecoder.load_posenc` copies a posenc model's weights in and the two give the same logits (a test checks
it, ``tests/test_bench_bare.py``): whatever time posenc spends above this model is posenc's overhead.

The encodings bare SDPA can express, each as its paper writes it:

- ``nope``: nothing;
- ``rope``: two multiplies per q and k with precomputed float32 ``cos``/``sin`` tables, pairs ``(i, i + D/2)``
  (posenc's default ``layout="half"``), base 10000;
- ``alibi``: the bias ``-m_h (i - j)`` built once per forward (or per decode step) as an additive float mask;
- ``sinusoidal``: the paper's table added to the embeddings.

Learned biases (T5, KERPLE, FIRE) need a bias that carries gradients: SDPA takes one as a float mask, but that is
posenc's own design choice to benchmark, not a ceiling, so they have no bare row.

Decoding (:meth:`BareDecoder.generate`) preallocates each layer's key/value buffer for the whole generation and
writes one slot per step: no concatenation, nothing re-built per step but ALiBi's one bias row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BARE_ENCODINGS", "BareDecoder"]

BARE_ENCODINGS = ("nope", "rope", "alibi", "sinusoidal")


def _rope_tables(length: int, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """float32 ``cos``/``sin`` ``(length, head_dim)``, each half repeated (pairs ``(i, i + D/2)``)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq  # exact for the lengths benchmarked
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().float(), angles.sin().float()


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _alibi_slopes(n_heads: int) -> Tensor:
    """The ALiBi paper's slopes (its reference code's rule for any head count)."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    p = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two(p) + power_of_two(2 * p)[0::2][: n_heads - p]
    return torch.tensor(slopes, dtype=torch.float32)


def _sinusoidal(length: int, dim: int) -> Tensor:
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)[:, :dim].float()


class _Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim, bias=False) for _ in range(4))


class _Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, hidden: int) -> None:
        super().__init__()
        self.attn_norm, self.attn, self.ffn_norm = nn.LayerNorm(dim), _Attention(dim, n_heads), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.GELU(), nn.Linear(hidden, dim, bias=False))


class BareDecoder(nn.Module):
    """posenc's decoder architecture in bare PyTorch (see the module docstring).

    Args:
        encoding: one of :data:`BARE_ENCODINGS`.
        vocab, dim, n_layers, n_heads: as :class:`posenc.TransformerConfig`'s ``vocab_size``, ``dim``, ``n_layers``,
            ``n_heads`` (no grouped-query attention).
        max_len: the longest sequence (prompt plus generated tokens) the tables are built for.
        ffn_mult: feed-forward width over ``dim``.

    Shapes: tokens ``(B, T)`` int64 -> logits ``(B, T, vocab)``.
    """

    def __init__(self, encoding: str, *, vocab: int, dim: int, n_layers: int, n_heads: int, max_len: int,
                 ffn_mult: float = 4.0) -> None:
        super().__init__()
        if encoding not in BARE_ENCODINGS:
            raise ValueError(f"BareDecoder: encoding must be one of {BARE_ENCODINGS}; got {encoding!r}. Learned "
                             f"biases have no bare-SDPA ceiling (see posenc.bench.bare).")
        if dim % n_heads or (dim // n_heads) % 2:
            raise ValueError(f"BareDecoder: dim={dim} must split into n_heads={n_heads} heads of even width.")
        self.encoding, self.dim, self.n_heads, self.max_len = encoding, dim, n_heads, max_len
        self.tok_emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(_Block(dim, n_heads, int(ffn_mult * dim)) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        cos, sin = _rope_tables(max_len, dim // n_heads)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("slopes", _alibi_slopes(n_heads)[:, None, None], persistent=False)  # (H, 1, 1)
        self.register_buffer("table", _sinusoidal(max_len, dim), persistent=False)

    def load_posenc(self, model: nn.Module) -> BareDecoder:
        """Copy the weights of a :class:`posenc.Transformer` decoder of the same size; returns ``self``."""
        state = {}
        for name, value in model.state_dict().items():
            name = name.removeprefix("decoder.")
            if name.startswith(("pe.", "layer_pe.")):
                continue  # the encoding's buffers: the bare model builds its own
            state[name] = value
        self.load_state_dict(state)
        return self

    def _attend(self, block: _Block, x: Tensor, start: int, cache: tuple[Tensor, Tensor] | None) -> Tensor:
        b, t, _ = x.shape
        attn = block.attn
        q, k, v = (p(x).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)
                   for p in (attn.q_proj, attn.k_proj, attn.v_proj))  # (B, H, T, D)
        if self.encoding == "rope":
            cos, sin = self.cos[start:start + t].to(x.dtype), self.sin[start:start + t].to(x.dtype)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if cache is not None:  # preallocated (B, H, max_len, D) buffers: write this step's slots, read the prefix
            cache[0][:, :, start:start + t] = k
            cache[1][:, :, start:start + t] = v
            k, v = cache[0][:, :, :start + t], cache[1][:, :, :start + t]
        if self.encoding == "alibi":
            i = torch.arange(start, start + t, device=x.device)[:, None]
            j = torch.arange(start + t, device=x.device)
            bias = (-self.slopes * (i - j)).masked_fill(j > i, float("-inf")).to(x.dtype)  # (H, T, Tk)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:  # a single new query sees every cached key: no mask
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        return attn.o_proj(out.transpose(1, 2).reshape(b, t, self.dim))

    def forward(self, tokens: Tensor, *, start: int = 0, caches: list | None = None) -> Tensor:
        """Logits ``(B, T, vocab)`` for ``tokens`` ``(B, T)`` at positions ``start .. start + T - 1``.

        ``caches``: one ``(k, v)`` pair of ``(B, H, max_len, D)`` buffers per layer (from :meth:`new_caches`), or
        ``None`` for a plain causal forward. A prefill with caches must start at 0.
        """
        x = self.tok_emb(tokens) * math.sqrt(self.dim)
        if self.encoding == "sinusoidal":
            x = x + self.table[start:start + tokens.shape[1]].to(x.dtype)
        for i, block in enumerate(self.blocks):
            x = x + self._attend(block, block.attn_norm(x), start, None if caches is None else caches[i])
            x = x + block.ffn(block.ffn_norm(x))
        return self.head(self.norm(x))

    def new_caches(self, batch: int) -> list[tuple[Tensor, Tensor]]:
        """Preallocated ``(k, v)`` buffers ``(batch, H, max_len, D)`` per layer, in the head's dtype and device."""
        w = self.head.weight
        shape = (batch, self.n_heads, self.max_len, self.dim // self.n_heads)
        return [(w.new_empty(shape), w.new_empty(shape)) for _ in self.blocks]

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int) -> Tensor:
        """Greedy decoding with the preallocated cache: ``(B, T0)`` -> ``(B, T0 + max_new_tokens)``."""
        total = prompt.shape[1] + max_new_tokens
        if total > self.max_len:
            raise ValueError(f"BareDecoder.generate: {prompt.shape[1]} + {max_new_tokens} tokens exceed max_len="
                             f"{self.max_len}.")
        caches = self.new_caches(prompt.shape[0])
        out = prompt.new_empty((prompt.shape[0], total))
        out[:, :prompt.shape[1]] = prompt
        logits = self(prompt, caches=caches)
        for n in range(prompt.shape[1], total):
            out[:, n] = logits[:, -1].argmax(-1)
            if n + 1 < total:
                logits = self(out[:, n:n + 1], start=n, caches=caches)
        return out
