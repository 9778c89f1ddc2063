"""``deformconv bench``: the CPU benchmark (method in benchmarks/README.md)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from ._args import make_folder, non_negative_int, positive_int

USES_BACKEND = True  # the CLI checks the kernel backend setting before running
NAME = "bench"
HELP = ("CPU benchmark: deformconv against nn.Conv2d (the floor), onnxruntime, torchvision "
        "and a grid_sample baseline, alternating in one process; medians and ratios, "
        "optionally saved as JSON")
DESCRIPTION = ("Times deformconv's forward and forward+backward on the CPU against nn.Conv2d "
               "of the same shape (the floor every ratio is taken against), onnxruntime, "
               "torchvision and a grid_sample baseline, alternating in one process, and "
               "measures forward peak memory; prints medians and ratios and, with --out, "
               "writes them as JSON. A contender named in --contenders that cannot run here "
               "is an error; one left out by default is skipped with a note.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..bench.contenders import CONTENDERS
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes and few repeats: checks that every contender runs")
    parser.add_argument("--repeats", type=positive_int, default=7,
                        help="timed rounds (default 7)")
    parser.add_argument("--warmup", type=non_negative_int, default=2,
                        help="untimed rounds first (default 2)")
    parser.add_argument("--no-variants", action="store_true",
                        help="skip the sweep's offset-groups/stride/dilation variants")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory measurement")
    parser.add_argument("--contenders", default=None,
                        help=f"comma-separated subset of: {', '.join(CONTENDERS)} (default: "
                        f"all that can run here)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch (and onnxruntime) threads (default: torch's default)")
    parser.add_argument("--out", default=None, help="write the results as JSON to this file "
                        "(its folder is created)")


def unavailable(name: str) -> Optional[str]:
    """Why the optional contender ``name`` cannot run here, or None when it can."""
    import torch
    try:
        if name == "torchvision":
            from torchvision.ops import deform_conv2d
            deform_conv2d(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2),
                          torch.zeros(1, 1, 1, 1))
        elif name == "onnxruntime":
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
    except Exception as e:  # not installed, or its compiled ops do not load with this torch
        return f"{type(e).__name__}: {e}"
    return None


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench import cpu
    from ..bench.contenders import CONTENDERS

    parser = args.parser
    explicit = args.contenders is not None
    names = ([n.strip() for n in args.contenders.split(",") if n.strip()] if explicit
             else list(CONTENDERS))
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        parser.error(f"--contenders: expected names from {list(CONTENDERS)}, got unknown "
                     f"{unknown}")
    for name in list(names):
        why = unavailable(name)
        if why is None:
            continue
        if explicit:
            parser.error(f"--contenders: {name} was asked for but cannot run here ({why}); "
                         f"install it or leave it out")
        print(f"note: skipping {name}, not available here ({why})", file=sys.stderr)
        names.remove(name)
    if args.out:  # create the folder now, not after minutes of timing
        make_folder(parser, "--out", os.path.dirname(args.out))
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
