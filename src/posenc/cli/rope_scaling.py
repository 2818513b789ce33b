"""``posenc rope-scaling``: what a RoPE context-extension method does to each frequency band.

Example::

    posenc rope-scaling --type yarn --factor 4 --original-max 4096 --head-dim 128 --plot yarn.png

prints, for every rotary pair, the wavelength before and after, the stretch, the turns it makes within the training
length and whether the method extrapolates (keeps), interpolates (divides by the factor) or blends it; then one line
per method with the same factor, and the attention scale. Flags for method parameters are generated from the
registry in :mod:`posenc.rope_scaling`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posenc.cli.types import UsageError, float_in, int_in, ranged
from posenc.rope_scaling import REQUIRED, SCALING_METHODS, band_report, resolve_scaling

__all__ = ["add_commands", "plot_bands"]

# Parameters with their own flags below, or not sensible on a command line.
_FIXED = {"factor", "original_max_position_embeddings", "short_factor", "long_factor", "logn"}


def _method_flags() -> dict[str, object]:
    """Every scalar parameter of any registered method with its default (REQUIRED/None when it has none)."""
    flags: dict[str, object] = {}
    for method in SCALING_METHODS.values():
        for key, default in method.params.items():
            if key not in _FIXED:
                flags.setdefault(key, default)
    return flags


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false; got {text!r}")


def _params(args: argparse.Namespace, rope_type: str, rotary_dim: int) -> dict:
    method = SCALING_METHODS[rope_type]
    params: dict = {"rope_type": rope_type, "original_max_position_embeddings": args.original_max}
    if "factor" in method.params:
        params["factor"] = args.factor
    if rope_type == "longrope":  # a uniform factor list, unless the user gives them
        n = rotary_dim // 2
        params["short_factor"] = args.short_factor or [1.0] * n
        params["long_factor"] = args.long_factor or [args.factor] * n
    for key in method.params:
        value = getattr(args, key, None)
        if key not in _FIXED and value is not None:
            params[key] = value
    return resolve_scaling(params, max_seq_len=args.original_max)


def _run(args: argparse.Namespace) -> int:
    rotary_dim = args.rotary_dim or args.head_dim
    if rotary_dim > args.head_dim:
        raise UsageError(f"--rotary-dim {rotary_dim} is larger than --head-dim {args.head_dim}; at most the head "
                         f"dim rotates.")
    params = _params(args, args.type, rotary_dim)
    seq_len = args.seq_len if args.seq_len is not None else int(args.factor * args.original_max)
    rows, scale = band_report(rotary_dim, args.base, params, seq_len=seq_len)
    print(f"rope scaling {args.type!r}: factor={args.factor:g}, original_max={args.original_max}, base={args.base:g}, "
          f"rotary_dim={rotary_dim}" + (f", seq_len={seq_len}" if SCALING_METHODS[args.type].length_dependent else ""))
    header = f"{'pair':>4}  {'wavelength':>12}  {'scaled':>12}  {'stretch':>8}  {'turns@orig':>10}  regime"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.pair:>4}  {r.wavelength:>12.4g}  {r.scaled_wavelength:>12.4g}  {r.stretch:>8.4g}  "
              f"{r.turns:>10.4g}  {r.regime}")
    print(f"attention scale: {scale:.6g} on cos and sin (attention logits x {scale * scale:.6g})")
    print("\nall methods at this factor (pairs extrapolated / blended / interpolated / other, attention scale):")
    for name in SCALING_METHODS:
        other = _params(args, name, rotary_dim)
        other_rows, other_scale = band_report(rotary_dim, args.base, other, seq_len=seq_len)
        counts = {k: sum(r.regime == k for r in other_rows) for k in ("extrapolate", "blend", "interpolate", "stretch")}
        print(f"  {name:<9} {counts['extrapolate']:>4} / {counts['blend']:>4} / {counts['interpolate']:>4} / "
              f"{counts['stretch']:>4}   scale {other_scale:.6g}")
    if args.plot:
        plot_bands(args, rotary_dim, seq_len, Path(args.plot))
        print(f"\nwrote {args.plot}")
    return 0


def plot_bands(args: argparse.Namespace, rotary_dim: int, seq_len: int, path: Path) -> None:
    """Wavelength per rotary pair before and after each method (log scale), the chosen one highlighted."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("posenc rope-scaling --plot needs matplotlib: pip install 'posenc[viz]'") from exc
    fig, ax = plt.subplots(figsize=(8, 5))
    base_rows = None
    for name in SCALING_METHODS:
        rows, scale = band_report(rotary_dim, args.base, _params(args, name, rotary_dim), seq_len=seq_len)
        base_rows = rows
        chosen = name == args.type
        ax.plot([r.pair for r in rows], [r.scaled_wavelength for r in rows], lw=2.5 if chosen else 1,
                alpha=1 if chosen else 0.6, label=f"{name} (scale {scale:.3g})" + (" *" if chosen else ""))
    ax.plot([r.pair for r in base_rows], [r.wavelength for r in base_rows], "k--", lw=1, label="before (plain RoPE)")
    ax.axhline(args.original_max, color="grey", ls=":", label=f"original max {args.original_max}")
    ax.axhline(args.factor * args.original_max, color="grey", ls="-.", label=f"target {args.factor:g}x")
    ax.set_yscale("log")
    ax.set_xlabel("rotary pair i (fast -> slow)")
    ax.set_ylabel("wavelength 2*pi/theta_i (tokens)")
    ax.set_title(f"RoPE scaling, factor {args.factor:g}, base {args.base:g}, rotary_dim {rotary_dim}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rope-scaling", help="show what a RoPE context-extension method does to each frequency band")
    p.add_argument("--type", required=True, choices=sorted(SCALING_METHODS), help="scaling method")
    factor, length, base = float_in(1, 1e6), int_in(2, 1 << 40), float_in(1, 1e12, lo_open=True)
    dim, positive = int_in(2, 1 << 16, even=True), float_in(0, 1e6, lo_open=True)
    p.add_argument("--factor", type=factor, default=4.0,
                   help=ranged("target length / training length (default: 4)", factor))
    p.add_argument("--original-max", type=length, default=4096, help=ranged("training length (default: 4096)", length))
    p.add_argument("--base", type=base, default=10000.0, help=ranged("RoPE base (default: 10000)", base))
    p.add_argument("--head-dim", type=dim, default=128, help=ranged("head dim (default: 128)", dim))
    p.add_argument("--rotary-dim", type=dim, default=None,
                   help=ranged("rotated channels, at most the head dim (default: head dim)", dim))
    p.add_argument("--seq-len", type=int_in(1, 1 << 46), default=None,
                   help=ranged("current length for dynamic/longrope (default: factor * original-max)",
                               int_in(1, 1 << 46)))
    p.add_argument("--short-factor", type=positive, nargs="+", default=None,
                   help=ranged("longrope short factors (one per pair)", positive))
    p.add_argument("--long-factor", type=positive, nargs="+", default=None,
                   help=ranged("longrope long factors (one per pair)", positive))
    for key, default in _method_flags().items():
        kind = _parse_bool if isinstance(default, bool) else float_in(-1e6, 1e6)
        shown = "" if default is REQUIRED or default is None else f" (default: {default})"
        used = ", ".join(n for n, m in SCALING_METHODS.items() if key in m.params)
        text = f"{used} parameter {key}{shown}"
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=kind, default=None,
                       help=text if kind is _parse_bool else ranged(text, kind))
    p.add_argument("--plot", default=None, metavar="PNG", help="also write a plot of wavelengths per pair")
    p.set_defaults(func=_run)
