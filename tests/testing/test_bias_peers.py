"""The bias peers under the kit (docs/conformance.md, "Bias peers"): what each adapter measures, and the committed
table is the one ``python -m posenc.testing.bias_peers --markdown`` prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from posenc.testing import bias_peers
from posenc.testing.bias import check_bias

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"


def _row(peer: str, what: str) -> tuple:
    for p, w, build in bias_peers.BIAS_PEERS:
        if (p, w) == (peer, what):
            return build()
    raise KeyError(what)


def test_attention_gym_alibi_has_the_naive_slopes_for_12_heads_and_is_right_for_8():
    fn, config, _ = _row("attention-gym", "generate_alibi_bias score_mod, 12 heads")
    assert check_bias(fn, config).finding.hypothesis == "slopes_naive"
    fn, config, _ = _row("attention-gym", "generate_alibi_bias score_mod, 8 heads")
    assert check_bias(fn, config).passed


def test_the_flexattention_blog_alibi_has_the_wrong_sign_with_positive_slopes():
    fn, config, _ = _row("pytorch blog", "FlexAttention ALiBi score_mod, 8 heads")
    assert check_bias(fn, config).finding.hypothesis == "sign_flipped"


def test_hugging_face_t5_buckets_and_x_transformers_alibi_pass():
    pytest.importorskip("transformers")
    pytest.importorskip("x_transformers")
    for peer, what in (("transformers", "T5 compute_bias, bidirectional"),
                       ("transformers", "T5 compute_bias, unidirectional (decoder)"),
                       ("x-transformers", "AlibiPositionalBias, 12 heads (bidirectional)")):
        fn, config, options = _row(peer, what)
        result = check_bias(fn, config, **options)
        assert result.passed, result.table()


def test_falcon_alibi_in_bfloat16_is_named_by_the_estimate():
    pytest.importorskip("transformers")
    fn, config, _ = _row("transformers", "Falcon build_alibi_tensor, 12 heads")
    result = check_bias(fn, config, max_position=1024)
    assert result.finding.hypothesis == "estimate" and "rounded to half precision" in result.diagnosis


def test_the_doc_lists_every_bias_peer_row():
    text = DOC.read_text()
    table = text[text.index("## Bias peers"):]
    for peer, what, _ in bias_peers.BIAS_PEERS:
        assert f"| {peer} | {what} |" in table, what
    assert "python -m posenc.testing.bias_peers --markdown" in table


@pytest.mark.slow
def test_the_committed_bias_table_is_current():
    pytest.importorskip("transformers")
    pytest.importorskip("x_transformers")
    want = bias_peers.markdown(bias_peers.run_bias_peers())
    text = DOC.read_text()
    start = text.index("| peer | what | kind, configuration |")
    end = text.index("<!-- end of the bias peers table -->")
    committed = text[start:end].strip()

    def verdicts(table: str) -> list[str]:  # peer, what, verdict and finding: the numbers may move in their 2nd digit
        return [" | ".join(c.strip() for i, c in enumerate(line.split("|")) if i in (1, 2, 4, 7))
                for line in table.splitlines() if line.startswith("| ") and not re.match(r"\| peer \|", line)]
    assert verdicts(committed) == verdicts(want)
