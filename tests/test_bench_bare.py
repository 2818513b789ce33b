"""The bare-PyTorch ceiling of the benchmarks is posenc's architecture, exactly: same parameters, same numbers.

If it were not, "posenc's overhead over the ceiling" would measure a different model. Tolerances: the two compute the
same float32 operations in the same order except ALiBi's bias (posenc folds it into the scores in its own order),
so logits agree to a few float32 ulps of their size (|logits| ~ 1 here).
"""

from __future__ import annotations

import pytest
import torch

from posenc.bench.bare import BARE_ENCODINGS, BareDecoder
from posenc.model import Transformer, TransformerConfig


def _pair(encoding: str, *, dim: int = 32, layers: int = 2, heads: int = 4, max_len: int = 40):
    torch.manual_seed(0)
    ours = Transformer(TransformerConfig(kind="decoder", vocab_size=50, dim=dim, n_layers=layers, n_heads=heads,
                                         max_seq_len=max_len, encoding=encoding)).eval()
    bare = BareDecoder(encoding, vocab=50, dim=dim, n_layers=layers, n_heads=heads, max_len=max_len)
    return ours, bare.load_posenc(ours).eval()


@pytest.mark.parametrize("encoding", BARE_ENCODINGS)
def test_bare_decoder_is_posenc_decoder(encoding):
    ours, bare = _pair(encoding)
    assert sum(p.numel() for p in bare.parameters()) == sum(p.numel() for p in ours.parameters())
    tokens = torch.randint(0, 50, (2, 33))
    with torch.no_grad():
        expected, got = ours(tokens), bare(tokens)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # the preallocated cache decodes exactly what the full forward computes, step by step
    with torch.no_grad():
        caches = bare.new_caches(2)
        steps = [bare(tokens[:, :20], caches=caches)]
        steps += [bare(tokens[:, n:n + 1], start=n, caches=caches) for n in range(20, 33)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("encoding", ["rope", "alibi"])
def test_bare_generation_matches_posenc_token_for_token(encoding):
    ours, bare = _pair(encoding)
    prompt = torch.randint(0, 50, (1, 8))
    assert torch.equal(bare.generate(prompt, 30), ours.generate(prompt, 30))


def test_bare_decoder_refuses_what_it_cannot_express():
    with pytest.raises(ValueError, match="no bare-SDPA ceiling"):
        BareDecoder("t5", vocab=10, dim=16, n_layers=1, n_heads=2, max_len=8)
    with pytest.raises(ValueError, match="even width"):
        BareDecoder("rope", vocab=10, dim=12, n_layers=1, n_heads=4, max_len=8)
    _, bare = _pair("rope", max_len=12)
    with pytest.raises(ValueError, match="exceed max_len=12"):
        bare.generate(torch.zeros(1, 8, dtype=torch.long), 5)


def test_generate_bench_rows_compare_like_models():
    pytest.importorskip("x_transformers")
    pytest.importorskip("transformers")
    from posenc.bench.generate import format_rows, run_generate_bench

    rows = run_generate_bench(quick=True, repeats=1)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"generate, rope", "decode step by removal, rope", "generate, alibi",
                            "decode step by removal, alibi"}
    rope = by_name["generate, rope"]
    assert rope["same_tokens"] and rope["bare_params"] == rope["posenc_params"]
    # HF Llama at the same size: its SwiGLU of 8/3 dim hidden units matches posenc's 4 dim GELU within 1%
    assert abs(rope["hf-llama_params"] - rope["posenc_params"]) <= 0.01 * rope["posenc_params"]
    assert rope["vs_hf_llama"] == pytest.approx(rope["posenc_tok_s"] / rope["hf-llama_tok_s"])
    removal = by_name["decode step by removal, alibi"]
    assert removal["removed_share"] == pytest.approx(1 - removal["step_ms_nope"] / removal["step_ms"])
    assert len(format_rows(rows)) == 4
    with pytest.raises(ValueError, match="among"):
        run_generate_bench(encodings=["t5"], quick=True)
