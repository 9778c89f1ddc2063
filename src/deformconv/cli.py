"""The ``deformconv`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _check(args: argparse.Namespace) -> int:
    """Build a v2 layer, run forward and backward on random data, compare with the oracle."""
    import torch

    from . import ModulatedDeformConv2dPack
    from .reference import deform_conv2d_ref

    from .ops import deform_conv2d

    torch.manual_seed(args.seed)
    layer = ModulatedDeformConv2dPack(8, 16, 3, padding=1, offset_groups=2).double()
    torch.nn.init.normal_(layer.conv_offset.weight, std=0.3)  # make it really deform
    x = torch.randn(2, 8, 12, 12, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    print(f"ModulatedDeformConv2dPack(8, 16, 3, padding=1, offset_groups=2): {tuple(x.shape)}"
          f" -> {tuple(y.shape)}, forward and backward ran")

    # The op against the oracle: output and the gradients of all five inputs.
    offset, mask = (t.detach().requires_grad_() for t in layer.offset_and_mask(x))
    ins = [x.detach().requires_grad_(), offset, layer.weight, layer.bias, mask]
    ours = deform_conv2d(*ins[:4], 1, 1, 1, ins[4])
    ref = deform_conv2d_ref(*ins[:4], 1, 1, 1, ins[4])
    grad = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, ins, grad)
    g_ref = torch.autograd.grad(ref, ins, grad)

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()

    err = rel(ours, ref)
    print(f"max relative error vs the float64 loop reference: output {err:.1e}")
    names = ["input", "offset", "weight", "bias", "mask"]
    gerrs = [rel(a, b) for a, b in zip(g_ours, g_ref)]
    print("  gradients: " + ", ".join(f"{n} {e:.1e}" for n, e in zip(names, gerrs)))
    gerr = max(gerrs)
    ok = err < 1e-9 and gerr < 1e-9
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def _info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from . import __version__
    print(f"deformconv {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"cuda available: {torch.cuda.is_available()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deformconv", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="run a deformable layer forward and backward on random "
                       "data and compare it with the float64 reference")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.set_defaults(func=_check)
    b = sub.add_parser("bench", help="CPU benchmark: deformconv against nn.Conv2d (the floor), "
                       "onnxruntime, torchvision and a grid_sample baseline, alternating in one "
                       "process; medians and ratios, optionally saved as JSON")
    from .bench import add_arguments, run_cli
    add_arguments(b)
    b.set_defaults(func=run_cli)
    i = sub.add_parser("info", help="versions and available kernels")
    i.set_defaults(func=_info)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
