"""Benchmarks: ``deformconv bench`` (see benchmarks/README.md for the method)."""

from __future__ import annotations

import argparse
import os

from .contenders import CONTENDERS, Problem

__all__ = ["add_arguments", "run_cli", "Problem", "CONTENDERS"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli import _non_negative_int, _positive_int
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes and few repeats: checks that every contender runs")
    p.add_argument("--repeats", type=_positive_int, default=7, help="timed rounds (default 7)")
    p.add_argument("--warmup", type=_non_negative_int, default=2, help="untimed rounds first (default 2)")
    p.add_argument("--no-variants", action="store_true",
                   help="skip the sweep's offset-groups/stride/dilation variants")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help=f"comma-separated subset of: {', '.join(CONTENDERS)}")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch (and onnxruntime) threads (default: torch's default)")
    p.add_argument("--out", default=None, help="write the results as JSON to this file (its "
                   "folder is created)")


def run_cli(args: argparse.Namespace) -> int:
    import torch

    from . import cpu

    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    parser = getattr(args, "parser", None)
    if unknown:
        msg = f"--contenders: expected names from {list(CONTENDERS)}, got unknown {unknown}"
        if parser is not None:
            parser.error(msg)
        raise SystemExit(msg)
    if args.out:  # create the folder now, not after minutes of timing
        folder = os.path.dirname(args.out)
        try:
            if folder:
                os.makedirs(folder, exist_ok=True)
        except OSError as e:
            msg = f"--out: cannot create the folder {folder!r} ({e.strerror})"
            if parser is not None:
                parser.error(msg)
            raise SystemExit(msg)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "conv2d" not in names:
        names.insert(0, "conv2d")  # the floor every ratio is taken against
    if args.quick:
        shapes, variants, repeats, warmup = cpu.QUICK, [], min(args.repeats, 3), 1
    else:
        shapes, variants = cpu.SHAPES, ([] if args.no_variants else cpu.VARIANTS)
        repeats, warmup = args.repeats, args.warmup
    cpu.run(shapes, variants, names, repeats, warmup, memory=not args.no_memory,
            out_path=args.out)
    return 0
