"""``posenc gallery``: one self-contained HTML page describing every registered encoding, with its plots.

The page is generated from the registry each time, so it never goes stale: for each encoding it shows the name,
family, the first line of its docstring, a formula, the paper (arXiv id), the parameter count at the probe size of
:func:`posenc.list_encodings`, whether it is defined past ``max_seq_len``, and every plot of
:func:`posenc.viz.applicable_kinds` (chosen from the encoding's hooks). Encodings that act inside attention (FoX's
gates, stick-breaking's normaliser, DeBERTa's c2p/p2c, ...) are drawn on one attention call of a sentence
(:func:`posenc.viz.attention_probe`: the untrained encoding in a fixed random layer). Images are PNGs embedded as
base64 ``data:`` URLs; the page loads nothing from the network (no scripts, fonts or styles from elsewhere), so it can
be opened from a file, mailed, or archived.

The page is reproducible: each picture builds its encoding from one seed (:data:`SEED`), so encodings with random
initial weights (a learned table, FoX's gate, Inkling's profiles) draw the same every time, and the caller's random
state is left alone.

Formulas: an encoding class may define a ``formula`` string (plain text / Unicode math); otherwise its family's
general form is shown. Captions and headings are in English (``lang="en"``) or Chinese (``lang="zh"``); the
docstring summaries stay as written.

Example:
    >>> page = build_gallery("gallery", lang="zh", names=["sinusoidal", "rope", "alibi"])
"""

from __future__ import annotations

import base64
import html
import inspect
import io
import os
from pathlib import Path
from typing import TextIO

import torch

from posenc import viz
from posenc._io import atomic_write_bytes
from posenc.base import list_encodings

__all__ = ["CAPTIONS", "FAMILY_FORMULAS", "LANGS", "PLOT_OPTIONS", "SEED", "build_gallery", "render_gallery"]

LANGS = ("en", "zh")
SEED = 0  # every picture builds its encoding from this seed: random initial weights draw the same each time

# Sizes for the gallery's pictures: small enough that the whole registry draws in seconds, large enough to read.
PLOT_OPTIONS: dict[str, dict] = {
    "waves": {"length": 96},
    "similarity": {"length": 96},
    "decay": {"max_distance": 512},
    "bias": {"length": 48},
    "wavelengths": {},
    "axes": {},
    "grid": {"height": 12, "width": 12},
    "fourier": {"length": 96},
    "phases": {"max_distance": 128},
    "generators": {},
    # one attention call on the default sentence (posenc.viz.PROBE_TEXT), every head of the 4-head probe encoding
    "gates": {},
    "logits": {},
    "disentangled": {},
    "normalizer": {},
}

CAPTIONS: dict[str, dict[str, str]] = {
    "waves": {
        "en": "Waves: each channel of the encoding over positions (sinusoidal: sin/cos at geometrically spaced "
              "wavelengths; RoPE: cos(p·θᵢ) of each rotary pair).",
        "zh": "波形：编码的每个通道随位置的变化（正弦编码：按几何级数分布波长的 sin/cos；"
              "RoPE：每个旋转对的 cos(p·θᵢ)）。",
    },
    "similarity": {
        "en": "Similarity: cosine of the position vectors of every query and key position. Constant diagonals mean "
              "the encoding only sees the offset between positions.",
        "zh": "相似度：每对查询位置与键位置的位置向量的余弦相似度。"
              "对角线上数值恒定，说明编码只依赖两个位置之间的相对偏移。",
    },
    "decay": {
        "en": "Long-term decay (Su et al. 2021, §3.4.3): the relative upper bound of q·k shrinks as the distance "
              "between tokens grows.",
        "zh": "远程衰减（Su 等 2021，§3.4.3）：随着两个词元之间距离增大，q·k 的相对上界逐渐减小。",
    },
    "bias": {
        "en": "Attention bias: what each head adds to the attention logits for every (query, key) pair, and its "
              "profile against the distance key − query.",
        "zh": "注意力偏置：每个注意力头对每个（查询，键）对的注意力 logit 所加的偏置，"
              "以及它随距离（键 − 查询）变化的曲线。",
    },
    "wavelengths": {
        "en": "Wavelengths 2π/θᵢ of the rotary pairs against the context length; a context-extension scaling "
              "stretches some bands.",
        "zh": "各旋转对的波长 2π/θᵢ 与上下文长度的对比；上下文扩展的缩放方法会拉伸其中一部分频带。",
    },
    "axes": {
        "en": "Frequency allocation per axis: the wavelength 2π/θᵢ of each rotary pair, coloured by the coordinate "
              "axis it reads (time, height, width; grey = not rotated). Qwen2-VL gives time the highest "
              "frequencies, VideoRoPE the lowest; HoPE leaves its temporal pairs unrotated.",
        "zh": "各坐标轴的频率分配：每个旋转对的波长 2π/θᵢ，按其读取的坐标轴着色（时间、高、宽；灰色 = 不旋转）。"
              "Qwen2-VL 把最高的频率分给时间，VideoRoPE 把最低的频率分给时间；HoPE 的时间频率对不旋转。",
    },
    "grid": {
        "en": "Grid: position vectors drawn on a 2-D grid of positions (2-D encodings get (row, column) "
              "coordinates; 1-D encodings are laid out row by row).",
        "zh": "网格：在二维位置网格上绘制的位置向量（二维编码使用（行，列）坐标；一维编码按行依次排列位置）。",
    },
    "fourier": {
        "en": "Fourier spectrum (FoPE): how strongly each kept frequency feeds each rotary pair (the mean |C| over "
              "heads: the identity plus the learned mixing), and a few pairs' waves cos'_d(p) beside RoPE's "
              "cos(p·θ_d); the clipped pairs, too slow for the training length, are flat. Untrained encoding.",
        "zh": "傅里叶谱（FoPE）：每个保留频率对每个旋转对的贡献强度（各头 |C| 的平均：单位矩阵加上学习到的混合），"
              "以及几个旋转对的波形 cos'_d(p) 与 RoPE 的 cos(p·θ_d) 的对比；被截断的旋转对频率太低，"
              "在训练长度内无法完成一个周期，因此是平的。未训练的编码。",
    },
    "phases": {
        "en": "Phase offsets (PoPE): the learned δ of each head and channel, in [−2π, 0], and what they do to the "
              "score of a query n tokens after its key when every magnitude is 1, beside the score without offsets. "
              "Untrained encoding (δ drawn uniformly).",
        "zh": "相位偏移（PoPE）：每个头、每个通道学习到的 δ（取值于 [−2π, 0]），以及当所有幅值为 1 时，"
              "它们对相距 n 个词元的查询与键之间得分的影响，并与无偏移时的得分对比。未训练的编码（δ 均匀抽取）。",
    },
    "generators": {
        "en": "Generators: the skew-symmetric matrices L_k of a learned rotation R(r) = exp(Σ r_k L_k), one per "
              "coordinate axis; when they commute, scores depend only on coordinate differences.",
        "zh": "生成元：可学习旋转 R(r) = exp(Σ r_k L_k) 的反对称矩阵 L_k，每个坐标轴一个；"
              "它们对易时，注意力分数只取决于坐标之差。",
    },
    "gates": {
        "en": "Forget gates on a sentence (its bytes are the tokens, the axis labels): the log gate log fₜ each head "
              "computes from each token, the decay cᵢ − cⱼ = Σ log f it adds to one query's logits, and plain ALiBi "
              "beside it (a constant gate is ALiBi). Untrained encoding in a fixed random layer.",
        "zh": "句子上的遗忘门（句子的字节即词元，见坐标轴标签）：每个头根据每个词元算出的对数门值 log fₜ，"
              "它给某个查询的 logit 加上的衰减 cᵢ − cⱼ = Σ log f，以及旁边的普通 ALiBi（门值恒定时即为 ALiBi）。"
              "未训练的编码，置于固定的随机注意力层中。",
    },
    "logits": {
        "en": "Logit terms on a sentence: what the encoding adds to q·k/√d for every (query, key) pair of one "
              "attention call, per head, and the same against the distance key − query (row i is query i's own "
              "profile). It depends on the input: the sentence on the axes, through a fixed random layer; "
              "untrained encoding.",
        "zh": "句子上的 logit 项：在一次注意力计算中，编码对每个（查询，键）对的 q·k/√d 所加的量（按头），"
              "以及它随距离（键 − 查询）的变化（第 i 行是查询 i 自己的曲线）。它依赖于输入：坐标轴上的句子，"
              "经过固定的随机层；编码未经训练。",
    },
    "disentangled": {
        "en": "Disentangled attention (DeBERTa) on a sentence: the content term q·k, content-to-position (each "
              "query against the relative table projected by the layer's W_k) and position-to-content (each key "
              "against the table projected by W_q), each as it enters the logits; they sum to the logits.",
        "zh": "句子上的解耦注意力（DeBERTa）：内容项 q·k、内容到位置（每个查询与经该层 W_k 投影的相对位置表）"
              "和位置到内容（每个键与经 W_q 投影的位置表），均按其进入 logit 的大小绘制；三者之和即为 logit。",
    },
    "normalizer": {
        "en": "Normaliser: the encoding's attention weights beside the softmax of the same logits on a sentence, "
              "and the mass each query leaves unspent, 1 − Σⱼ wᵢⱼ (an attention sink's share, or stick-breaking's "
              "remainder).",
        "zh": "归一化方式：句子上该编码的注意力权重与同一组 logit 的 softmax 并列对比，"
              "以及每个查询未分配出去的质量 1 − Σⱼ wᵢⱼ（注意力汇聚项所占的份额，或 stick-breaking 的剩余部分）。",
    },
}

TEXT: dict[str, dict[str, str]] = {
    "title": {"en": "posenc — positional encoding gallery", "zh": "posenc —— 位置编码图集"},
    "intro": {
        "en": "Every encoding registered in posenc, drawn from the same tensors the models use. Generated from the "
              "registry: {n} encodings.",
        "zh": "posenc 中注册的每一种位置编码，均由模型实际使用的张量绘制。本页由注册表自动生成：共 {n} 种编码。",
    },
    "contents": {"en": "Contents", "zh": "目录"},
    "family": {"en": "family", "zh": "类别"},
    "formula": {"en": "formula", "zh": "公式"},
    "paper": {"en": "paper", "zh": "论文"},
    "params": {"en": "parameters (dim=512, 8 heads, max_seq_len=2048)",
               "zh": "参数量（dim=512，8 个头，max_seq_len=2048）"},
    "extrapolates": {"en": "defined past max_seq_len", "zh": "可用于超过 max_seq_len 的位置"},
    "yes": {"en": "yes", "zh": "是"},
    "no": {"en": "no", "zh": "否"},
    "none": {"en": "none", "zh": "无"},
    "details": {"en": "full description", "zh": "完整说明"},
    "family_form": {"en": "(general form of its family)", "zh": "（该类别的一般形式）"},
    "no_plots": {
        "en": "No position-only picture: this encoding changes attention itself (or adds nothing). Draw its "
              "attention maps on a trained model with: posenc plot attention CHECKPOINT --text '...'",
        "zh": "没有仅由位置决定的图：该编码直接改变注意力计算本身（或不添加任何位置信息）。"
              "可用训练好的模型绘制其注意力图：posenc plot attention CHECKPOINT --text '...'",
    },
    "footer": {
        "en": "Generated by posenc {version}. Images are embedded; the page loads nothing from the network.",
        "zh": "由 posenc {version} 生成。图片已内嵌，本页不从网络加载任何内容。",
    },
}

FAMILY_FORMULAS: dict[str, str] = {
    "none": "attn = softmax(q·kᵀ/√d) — no position term",
    "absolute": "x′ₚ = xₚ + PE(p)",
    "rotary": "q′ₘ = R(m)·qₘ, k′ₙ = R(n)·kₙ  ⇒  q′ₘ·k′ₙ = qₘᵀ·R(n − m)·kₙ",
    "relative": "attn = softmax(q·kᵀ/√d + b(i − j))",
    "contextual": "positions counted from context: pᵢⱼ = Σₖ₌ⱼ..ᵢ σ(qᵢ·kₖ)",
    "multiscale": "x′ₚ = xₚ + Σₛ PEₛ(p at scale s)",
    "2d": "x′₍ᵣ,꜀₎ = x₍ᵣ,꜀₎ + PE(row r, column c)  or  rotation by R(r, c)",
    "graph": "x′ᵥ = xᵥ + PE(node v from the graph structure)",
    "adaptive": "positions or their effect learned from the input",
    "wrapper": "applies the wrapped encoding with transformed positions",
}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK SC",
       "WenQuanYi Micro Hei", sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; line-height: 1.45; }
header, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 24px; }
h1 { font-size: 1.6em; margin: 0 0 6px; }
nav { margin: 12px 0 20px; font-size: 0.92em; }
nav a { display: inline-block; margin: 2px 10px 2px 0; color: #2456a6; text-decoration: none; }
section.encoding { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; margin: 0 0 22px;
                   padding: 16px 20px; }
section.encoding h2 { margin: 0 0 4px; font-size: 1.3em; }
.summary { margin: 0 0 10px; color: #333a48; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 14px; margin: 0 0 12px;
           font-size: 0.92em; }
dl.facts dt { color: #5b6477; }
dl.facts dd { margin: 0; }
code.formula { background: #f1f3f7; padding: 1px 6px; border-radius: 4px; font-size: 0.95em; }
details { margin: 0 0 10px; font-size: 0.9em; }
details pre { white-space: pre-wrap; background: #f8f9fb; padding: 8px 10px; border-radius: 4px; }
figure { margin: 12px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eceef2; border-radius: 4px; background: #fff; }
figcaption { font-size: 0.9em; color: #3f4758; margin-top: 4px; }
span.hint { color: #6b7385; font-size: 0.9em; }
p.note { font-size: 0.9em; color: #6a5a1f; background: #fbf6e3; padding: 8px 10px; border-radius: 4px; }
footer { font-size: 0.85em; color: #6b7385; padding-bottom: 30px; }
"""


def _t(key: str, lang: str, **fmt) -> str:
    return html.escape(TEXT[key][lang].format(**fmt))


def _figure_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=viz.DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _encoding_section(info, lang: str, progress: TextIO | None) -> str:
    pe = viz.resolve_encoding(info.name)
    cls = type(pe)
    formula = getattr(cls, "formula", None)
    formula_note = ""
    if not formula:
        formula = FAMILY_FORMULAS.get(info.family, "")
        formula_note = f' <span class="hint">{_t("family_form", lang)}</span>' if formula else ""
    paper = (f'<a href="https://arxiv.org/abs/{html.escape(info.paper)}">arXiv:{html.escape(info.paper)}</a>'
             if info.paper else _t("none", lang))
    doc = inspect.getdoc(cls) or ""
    parts = [f'<section class="encoding" id="enc-{html.escape(info.name)}">',
             f"<h2>{html.escape(info.name)}</h2>",
             f'<p class="summary">{html.escape(info.summary.replace("``", ""))}</p>',
             '<dl class="facts">',
             f"<dt>{_t('family', lang)}</dt><dd>{html.escape(info.family)}</dd>",
             f"<dt>{_t('formula', lang)}</dt><dd><code class=\"formula\">{html.escape(formula)}</code>{formula_note}"
             f"</dd>",
             f"<dt>{_t('paper', lang)}</dt><dd>{paper}</dd>",
             f"<dt>{_t('params', lang)}</dt><dd>{info.parameters:,}</dd>",
             f"<dt>{_t('extrapolates', lang)}</dt><dd>{_t('yes' if info.extrapolates else 'no', lang)}</dd>",
             "</dl>"]
    if doc:
        parts.append(f"<details><summary>{_t('details', lang)}</summary><pre>{html.escape(doc)}</pre></details>")
    kinds = viz.applicable_kinds(pe)
    for kind in kinds:
        if progress is not None:
            print(f"gallery: {info.name}: {kind}", file=progress, flush=True)
        try:
            torch.manual_seed(SEED)  # the same initial weights for every picture, every time
            fig = viz.plot(kind, info.name, **PLOT_OPTIONS[kind])
        except (ValueError, TypeError, RuntimeError) as exc:  # say which encoding and plot broke
            raise RuntimeError(f"gallery: drawing {kind!r} for {info.name!r} failed: {exc}") from exc
        alt = f"{kind} plot of {info.name}"
        parts.append(f'<figure><img src="data:image/png;base64,{_figure_png(fig)}" alt="{html.escape(alt)}">'
                     f"<figcaption>{html.escape(CAPTIONS[kind][lang])}</figcaption></figure>")
    if not kinds:
        parts.append(f'<p class="note">{_t("no_plots", lang)}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def render_gallery(*, lang: str = "en", names: list[str] | None = None, progress: TextIO | None = None) -> str:
    """The gallery page as an HTML string (see :func:`build_gallery`)."""
    from posenc import __version__

    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}; got {lang!r}.")
    with torch.random.fork_rng(devices=[]):  # building encodings draws their initial weights: not from the caller's
        infos = list_encodings()
        if names is not None:
            known = {info.name: info for info in infos}
            missing = [n for n in names if n not in known]
            if missing:
                raise ValueError(f"unknown encoding(s) {missing}; available: {', '.join(sorted(known))}.")
            infos = [known[n] for n in dict.fromkeys(names)]
        sections = "\n".join(_encoding_section(info, lang, progress) for info in infos)
    nav = " ".join(f'<a href="#enc-{html.escape(i.name)}">{html.escape(i.name)}</a>' for i in infos)
    html_lang = "zh-Hans" if lang == "zh" else "en"
    return f"""<!DOCTYPE html>
<html lang="{html_lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_t("title", lang)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{_t("title", lang)}</h1>
<p>{_t("intro", lang, n=len(infos))}</p>
<nav aria-label="{_t("contents", lang)}"><strong>{_t("contents", lang)}:</strong> {nav}</nav>
</header>
<main>
{sections}
</main>
<footer><p>{_t("footer", lang, version=__version__)}</p></footer>
</body>
</html>
"""


def build_gallery(out: str | os.PathLike, *, lang: str = "en", names: list[str] | None = None,
                  progress: TextIO | None = None) -> Path:
    """Write ``out/index.html``: every registered encoding (or ``names``) with its plots; returns the page's path.

    Args:
        out: directory for the page (created if missing).
        lang: ``"en"`` or ``"zh"`` captions and headings.
        names: only these encodings, in this order (default: the whole registry, sorted).
        progress: a stream for one line per plot drawn (e.g. ``sys.stderr``), or ``None``.
    """
    directory = Path(out)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"gallery: --out {str(directory)!r} is a file; give a directory for index.html.")
    page = render_gallery(lang=lang, names=names, progress=progress)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "index.html"
        atomic_write_bytes(path, page.encode("utf-8"))
    except OSError as exc:
        raise ValueError(f"gallery: cannot write to {str(directory)!r}: {exc.strerror or exc}. Hint: choose a "
                         f"directory you can write to.") from exc
    return path
