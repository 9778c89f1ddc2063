"""Registers, spills, shared memory and tensor-core use of every shipped Triton kernel,
configuration and dtype, compiled offline for a GPU architecture (no GPU needed; Triton's wheel
brings the compiler and `ptxas`)."""

from __future__ import annotations

import argparse
import json
import os
import sys

USES_BACKEND = False  # runs no op: the CLI need not check the kernel backend setting
NAME = "kernels"
HELP = "resource report of the Triton kernels (registers, spills, shared memory), offline"
ARCHS = ("sm_90a", "sm_80")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=ARCHS, default="sm_90a",
                        help="GPU architecture to compile for (default: sm_90a)")
    parser.add_argument("--json", action="store_true",
                        help="print the rows as a JSON list instead of a Markdown table")
    parser.add_argument("--kernel", default="", metavar="SUBSTRING",
                        help="only the kernels whose name contains SUBSTRING, e.g. conv3d")


def run(args: argparse.Namespace) -> int:
    try:
        import triton  # noqa: F401,PLC0415 (optional dependency)
    except ImportError:
        print("deformconv kernels needs Triton: pip install 'deformconv[triton]'",
              file=sys.stderr)
        return 1
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("deformconv kernels compiles the kernels: unset TRITON_INTERPRET",
              file=sys.stderr)
        return 1
    from deformconv.ops.triton import report  # noqa: PLC0415 (imports triton)

    names = [spec.name for spec in report.kernel_specs()]
    if not any(args.kernel in n for n in names):
        args.parser.error(f"--kernel: no kernel name contains {args.kernel!r}; the kernels "
                          f"are: {', '.join(names)}")
    rows = report.resource_rows(args.arch, args.kernel)
    print(json.dumps(rows, indent=1) if args.json else report.markdown(rows))
    spilling = [r for r in rows if r["spill_bytes"]]
    if spilling:
        print(f"{len(spilling)} of {len(rows)} configurations spill registers",
              file=sys.stderr)
    return 0
