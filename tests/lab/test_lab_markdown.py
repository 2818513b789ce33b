"""The report's Markdown helpers: any text escaped renders as itself, in a paragraph, a table cell or a code span."""

import html
import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from posenc.lab import markdown as md

pytest.importorskip("markdown_it")

# printable ASCII (every Markdown marker) and a few non-ASCII characters the report uses
TEXT = st.text(st.sampled_from([chr(c) for c in range(32, 127)] + ["±", "†", "é", "\n"]), min_size=1, max_size=40)


def _shown(fragment: str) -> str:
    """The text a reader sees of an HTML fragment."""
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def _one_line(text: str) -> str:
    return " ".join(text.split())


@given(TEXT)
def test_escaped_text_renders_as_itself(text):
    page = md.render_html(f"{md.escape(text, starts_line=True)}\n", title="t", images={})
    body = page.split("<body>", 1)[1].rsplit("</body>", 1)[0]
    if not _one_line(text):
        return
    assert body.strip().startswith("<p>") and body.count("<p>") == 1, body  # one paragraph, no block started
    assert _one_line(_shown(body)) == _one_line(text)


@given(st.lists(TEXT, min_size=2, max_size=2), TEXT)
def test_table_cells_and_code_spans_render_as_themselves(cells, snippet):
    table = md.table(["a", "b", "code"], [[md.escape(cells[0]), md.escape(cells[1]), md.code(snippet, cell=True)]],
                     raw=True)
    page = md.render_html(table + "\n", title="t", images={})
    row = re.findall(r"<tr>(.*?)</tr>", page, flags=re.S)[-1]
    shown = [_shown(c) for c in re.findall(r"<td>(.*?)</td>", row, flags=re.S)]
    assert [_one_line(c) for c in shown[:2]] == [_one_line(c) for c in cells]
    assert shown[2] == _one_line(snippet)


def test_a_row_of_the_wrong_width_and_a_missing_image_are_clear_errors():
    with pytest.raises(ValueError, match="table row 0 has 1 cells, the header 2"):
        md.table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="plots/x.png"):
        md.render_html("![x](plots/x.png)\n", title="t", images={})
    page = md.render_html("![x](plots/x.png)\n", title="<t>", images={"plots/x.png": b"\x89PNG"})
    assert 'src="data:image/png;base64,iVBORw==" alt="x"' in page and "<title>&lt;t&gt;</title>" in page


def test_code_spans_pad_a_backtick_at_either_edge_and_show_nothing_for_blank_text():
    # CommonMark strips one space from each side of a code span, so a span that starts or ends with a backtick is
    # padded (else the fence would swallow it); the fence is one backtick longer than the longest run inside
    assert md.code("`rope") == "`` `rope ``" and md.code("rope`") == "`` rope` ``"
    assert md.code("`q`") == "`` `q` ``" and md.code("a``b") == "```a``b```"
    assert md.code("") == "" and md.code(" \n ") == ""
    assert md.code("a|b") == "`a|b`" and md.code("a|b", cell=True) == "`a\\|b`"


def test_an_empty_cell_keeps_its_column():
    assert md.table(["a", "b"], [["x", ""]]) == "| a | b |\n|---|---|\n| x |   |"
    assert md.table(["a", "b"], [["*", ""]], raw=True) == "| a | b |\n|---|---|\n| * |   |"  # raw: as given


@pytest.mark.parametrize("text, escaped", [("# title", "\\# title"), ("  - item", "\\- item"), ("+ x", "\\+ x"),
                                           ("> quote", "\\> quote"), ("1. first", "1\\. first"),
                                           (" 12) twelfth", "12\\) twelfth"), ("a - b. 1. c", "a - b. 1. c")])
def test_what_would_start_a_block_is_escaped_at_the_start_of_a_line_only(text, escaped):
    assert md.escape(text, starts_line=True) == escaped
    assert md.escape(text) == text.strip().replace(">", "\\>")  # inside a line (a cell, after text) they stay


def test_raw_html_in_the_markdown_is_shown_as_text():
    page = md.render_html("<b>bold</b> <script>x()</script>\n", title="t", images={})
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<script>" not in page


def test_a_missing_image_error_names_the_known_ones():
    with pytest.raises(ValueError, match=r"known: plots/a\.png, plots/b\.png\.$"):
        md.render_html("![x](plots/x.png)\n", title="t", images={"plots/a.png": b"", "plots/b.png": b""})
    with pytest.raises(ValueError, match=r"known: none\.$"):
        md.render_html("![x](plots/x.png)\n", title="t", images={})


def test_without_markdown_it_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "markdown_it", None)  # what `import markdown_it` meets when it is not installed
    with pytest.raises(ImportError, match=r"^report\.html is rendered with markdown-it-py: pip install 'posenc\[lab\]' "
                                          r"\(or 'markdown-it-py>=3'\)\.$"):
        md.renderer()
