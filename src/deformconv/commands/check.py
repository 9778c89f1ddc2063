"""Runs a v2 deformable layer forward and backward on random float64 data and compares the op's
output and the gradients of all five inputs with the float64 loop reference; prints the relative
errors and OK or MISMATCH (exit code 1)."""

from __future__ import annotations

import argparse

NAME = "check"
HELP = ("run a deformable layer forward and backward on random data and compare it with the "
        "float64 reference")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import ModulatedDeformConv2dPack
    from ..ops import deform_conv2d
    from ..ops.deform_conv.reference import deform_conv_ref

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
    ref = deform_conv_ref(*ins[:4], 1, 1, 1, ins[4])
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
    ok = err < 1e-9 and max(gerrs) < 1e-9
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1
