"""Times deformconv's forward and forward+backward on the CPU against nn.Conv2d of the same shape
(the floor every ratio is taken against), onnxruntime, torchvision and a grid_sample baseline,
alternating in one process, and measures forward peak memory; prints medians and ratios and,
with --out, writes them as JSON. A contender named in --contenders that cannot run here is an
error; one left out by default is skipped with a note."""

from __future__ import annotations

import argparse
import os
import sys

from ._args import make_folder, non_negative_int, positive_int

NAME = "bench"
HELP = ("CPU benchmark: deformconv against nn.Conv2d (the floor), onnxruntime, torchvision "
        "and a grid_sample baseline, alternating in one process; medians and ratios, "
        "optionally saved as JSON")


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
                        "(its folder is created; checked before the run)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench import cpu
    from ..bench.contenders import CONTENDERS, unavailable

    parser = args.parser
    explicit = args.contenders is not None
    names = ([n.strip() for n in args.contenders.split(",") if n.strip()] if explicit
             else list(CONTENDERS))
    if not names:
        parser.error(f"--contenders: empty; expected comma-separated names from "
                     f"{list(CONTENDERS)}")
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
    if args.out is not None:  # now, not after minutes of timing
        check_out_file(parser, args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "conv2d" not in names:
        names.insert(0, "conv2d")  # the floor every ratio is taken against
    if args.quick:
        shapes, variants, repeats, warmup = cpu.QUICK, [], min(args.repeats, 3), 1
    else:
        shapes, variants = cpu.SHAPES, ([] if args.no_variants else cpu.VARIANTS)
        repeats, warmup = args.repeats, args.warmup
    result = cpu.run(shapes, variants, names, repeats, warmup, memory=not args.no_memory,
                     out_path=None)
    return 0 if args.out is None else save_results(result, args.out)


def check_out_file(parser: argparse.ArgumentParser, path: str) -> None:
    """``--out`` names the JSON file: a usage error now when it is a folder or cannot be
    written. Its folder is created; the file itself is not (a failed run leaves none)."""
    if not path or path.endswith(("/", os.sep)) or os.path.isdir(path):
        parser.error(f"--out: expected the path of the JSON file to write, got the folder "
                     f"{path!r} (give e.g. {os.path.join(path or '.', 'bench.json')!r})")
    make_folder(parser, "--out", os.path.dirname(path))
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        parser.error(f"--out: cannot write {path!r} ({e.strerror})")
    if not existed:
        os.remove(path)


def save_results(result: dict, path: str) -> int:
    """Write ``result`` to ``path``; if that fails after all (the place changed during the
    run), to a new file in the current or the temporary folder, saying where. 0 when ``path``
    was written, else 1."""
    import json
    import tempfile

    text = json.dumps(result, indent=1)
    try:
        with open(path, "w") as f:
            f.write(text)
        print(f"wrote {path}")
        return 0
    except OSError as e:
        why = f"could not write {path!r} ({e.strerror})"
    for folder in (os.getcwd(), tempfile.gettempdir()):
        try:
            fd, kept = tempfile.mkstemp(prefix="deformconv-bench-", suffix=".json", dir=folder)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        except OSError:
            continue
        print(f"deformconv bench: {why}; the results are in {kept}", file=sys.stderr)
        return 1
    print(f"deformconv bench: {why}; the results follow", file=sys.stderr)
    print(text)
    return 1
