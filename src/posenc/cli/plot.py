"""``posenc plot``: one picture of an encoding (:func:`posenc.viz.plot`).

Examples::

    posenc plot similarity sinusoidal --length 128 --out sim.png
    posenc plot decay rope --option base=500000 --out decay.svg
    posenc plot wavelengths rope --scaling '{"rope_type": "yarn", "factor": 4.0}' --out bands.png
    posenc plot waves runs/learned.pt --out learned_waves.png        # a trained Transformer.save checkpoint
    posenc plot attention runs/rope.pt --text "the cat sat" --out attn.png
    posenc plot gates fox --text "the cat sat on the mat" --out fox.png   # one attention call on a sentence
    posenc plot normalizer stick_breaking --out sb.png
    posenc plot logits runs/inkling.pt --layer 1 --out inkling.png         # a trained model's own layer 1

The probe kinds (gates, logits, disentangled, normalizer) draw one self-attention call on a sentence (--text; its
UTF-8 bytes are the tokens): a bare encoding in a fixed random layer, a checkpoint in its own layer --layer. An
encoding given by name is built for causal attention (bidirectional for disentangled) unless --option causal=...
says otherwise.
"""

from __future__ import annotations

import argparse
import json

from posenc._viz_kinds import MAX_PLOT_LENGTH, PLOT_KINDS, PROBE_KINDS
from posenc.cli.types import int_in, json_object, ranged

__all__ = ["add_commands"]


def _parse_option(text: str) -> tuple[str, object]:
    """``key=value`` with ``value`` read as JSON when it parses (numbers, true/false, lists, dicts), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as base=500000; got {text!r}.")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _plot(args: argparse.Namespace) -> int:
    from posenc import viz

    kwargs: dict = {}
    options = dict(args.option or [])
    for flag, key in (("dim", "dim"), ("heads", "n_heads"), ("max_seq_len", "max_seq_len")):
        if getattr(args, flag) is not None:
            options[key] = getattr(args, flag)
    if args.scaling is not None:
        options["scaling"] = args.scaling
    kind = args.kind
    if kind == "attention":
        if args.text is None:
            raise ValueError("posenc plot attention needs --text 'some input' (its UTF-8 bytes are the tokens).")
        if options:
            raise ValueError(f"options {sorted(options)} do not apply to attention maps: the checkpoint fixes the "
                             f"model.")
        kwargs["text"] = args.text
        if args.layers is not None:
            kwargs["layers"] = args.layers
        if args.heads_shown is not None:
            kwargs["heads"] = args.heads_shown
    elif kind in PROBE_KINDS:
        for flag, name in ((args.length, "--length"), (args.layers, "--layers")):
            if flag is not None:
                raise ValueError(f"{name} does not apply to '{kind}' (one attention call on --text; a model's layer "
                                 f"is chosen with --layer).")
        if args.text is not None:
            kwargs["text"] = args.text
        if args.layer is not None:
            kwargs["layer"] = args.layer
        if args.heads_shown is not None:
            kwargs["heads"] = args.heads_shown
        kwargs.update(options)
    else:
        if args.text is not None:
            raise ValueError(f"--text is only for 'posenc plot attention' and the sentence kinds "
                             f"({', '.join(PROBE_KINDS)}); '{kind}' draws positions only.")
        if args.layer is not None:
            raise ValueError(f"--layer is only for the sentence kinds ({', '.join(PROBE_KINDS)}).")
        if kind in ("waves", "similarity", "bias", "fourier") and args.length is not None:
            kwargs["length"] = args.length
        if kind == "similarity":
            kwargs["metric"] = args.metric
        if kind in ("decay", "phases") and args.length is not None:
            kwargs["max_distance"] = args.length
        if kind == "grid":
            kwargs["height"], kwargs["width"] = args.height, args.width
        if kind in ("bias", "phases") and args.heads_shown is not None:
            kwargs["heads"] = args.heads_shown
        kwargs.update(options)
    viz.plot(kind, args.name, out=args.out, **kwargs)
    print(f"wrote {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw one picture of an encoding (waves, similarity, decay, bias, ...)",
                       description="Draw one picture of an encoding from the tensors the models use.")
    p.add_argument("kind", choices=PLOT_KINDS, metavar="KIND", help=f"one of: {', '.join(PLOT_KINDS)}")
    p.add_argument("name", metavar="NAME", help="encoding name (posenc list), or a Transformer.save checkpoint "
                   "(required for 'attention'; for the others it draws the checkpoint's trained encoding)")
    p.add_argument("--out", required=True, metavar="FILE", help="output image, .png or .svg")
    p.add_argument("--length", type=int_in(1, MAX_PLOT_LENGTH), default=None,
                   help=ranged("positions drawn (waves/similarity/bias) or the largest distance (decay)",
                               int_in(1, MAX_PLOT_LENGTH)))
    p.add_argument("--metric", choices=("cosine", "dot"), default="cosine", help="similarity measure (default cosine)")
    side = int_in(1, 1024)
    p.add_argument("--height", type=side, default=16, help=ranged("grid rows (default 16)", side))
    p.add_argument("--width", type=side, default=16, help=ranged("grid columns (default 16)", side))
    p.add_argument("--dim", type=int_in(1, 1 << 16), default=None,
                   help=ranged("model width of the encoding built by name", int_in(1, 1 << 16)))
    p.add_argument("--heads", type=int_in(1, 1024), default=None,
                   help=ranged("n_heads of the encoding built by name", int_in(1, 1024)))
    p.add_argument("--max-seq-len", type=int_in(1, MAX_PLOT_LENGTH), default=None,
                   help=ranged("max_seq_len of the encoding built by name", int_in(1, MAX_PLOT_LENGTH)))
    p.add_argument("--option", type=_parse_option, action="append", metavar="KEY=VALUE",
                   help="an encoding option, e.g. --option base=500000 (repeatable; values are JSON when they parse)")
    p.add_argument("--scaling", type=json_object('{"rope_type": "yarn", "factor": 4}'), default=None, metavar="JSON",
                   help="RoPE scaling as an HF-style dict, e.g. '{\"rope_type\": \"yarn\", \"factor\": 4}'")
    p.add_argument("--text", default=None, help=f"input text for 'attention' and {', '.join(PROBE_KINDS)} (UTF-8 "
                   f"bytes are the tokens; those four default to a pangram)")
    p.add_argument("--layers", type=int_in(0, 1023), nargs="+", default=None,
                   help=ranged("layers drawn by 'attention' (default all)", int_in(0, 1023)))
    p.add_argument("--layer", type=int_in(0, 1023), default=None,
                   help=ranged(f"the model layer whose call {', '.join(PROBE_KINDS)} draw, for a checkpoint "
                               f"(default 0)", int_in(0, 1023)))
    p.add_argument("--heads-shown", type=int_in(1, 1024), default=None,
                   help=ranged(f"heads drawn by 'attention', 'bias' and {', '.join(PROBE_KINDS)}", int_in(1, 1024)))
    p.set_defaults(func=_plot)
