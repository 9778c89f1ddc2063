"""The deformconv command line: check, info, kernels, bench, demo, visualize.

Each subcommand is a module of ``deformconv.commands`` (``NAME``, ``HELP``, ``add_arguments``,
``run``); this file only builds the parser from ``COMMANDS`` and dispatches.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from .commands import bench, check, demo, info, kernels, visualize
from .commands._backend import backend_setting_error

COMMANDS = [check, info, kernels, bench, demo, visualize]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="deformconv", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"deformconv {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(
        m.NAME for m in COMMANDS) + "}")
    for module in COMMANDS:
        s = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__)
        module.add_arguments(s)
        s.set_defaults(run=module.run, parser=s,
                       uses_backend=getattr(module, "USES_BACKEND", True))
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "uses_backend", False):
        # A bad setting would surface as a traceback from deep inside the first op call.
        error = backend_setting_error()
        if error is not None:
            print(f"deformconv {args.command}: error: {error}", file=sys.stderr)
            return 2
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except BrokenPipeError:  # `deformconv info | head`: the reader left; stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
