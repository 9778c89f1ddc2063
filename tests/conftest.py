"""Shared helpers for the tests: random problem instances in every layout the op accepts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import pytest
import torch

from deformconv.reference import deform_conv2d_ref


@dataclass
class Case:
    N: int = 2
    C: int = 4
    H: int = 6
    W: int = 7
    O: int = 6
    kernel: Tuple[int, int] = (3, 3)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (1, 1)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    offset_groups: int = 1
    mask: bool = True
    bias: bool = True
    offset_scale: float = 2.0

    @property
    def out_hw(self):
        kH, kW = self.kernel
        oH = (self.H + 2 * self.padding[0] - self.dilation[0] * (kH - 1) - 1) // self.stride[0] + 1
        oW = (self.W + 2 * self.padding[1] - self.dilation[1] * (kW - 1) - 1) // self.stride[1] + 1
        return oH, oW

    def tensors(self, dtype=torch.float64, seed=0, requires_grad=False):
        """input, offset, weight, bias, mask (None where the case has none)."""
        g = torch.Generator().manual_seed(seed)
        kH, kW = self.kernel
        K = kH * kW
        oH, oW = self.out_hw
        x = torch.randn(self.N, self.C, self.H, self.W, generator=g, dtype=torch.float64)
        off = torch.randn(self.N, 2 * self.offset_groups * K, oH, oW, generator=g,
                          dtype=torch.float64) * self.offset_scale
        w = torch.randn(self.O, self.C // self.groups, kH, kW, generator=g, dtype=torch.float64)
        b = torch.randn(self.O, generator=g, dtype=torch.float64) if self.bias else None
        m = (torch.rand(self.N, self.offset_groups * K, oH, oW, generator=g,
                        dtype=torch.float64) if self.mask else None)
        out = [t.to(dtype) if t is not None else None for t in (x, off, w, b, m)]
        if requires_grad:
            for t in out:
                if t is not None:
                    t.requires_grad_()
        return out

    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)


def run_both(fn, case: Case, dtype=torch.float64, seed=0, ref_dtype=torch.float64):
    """Output and all gradients of ``fn`` and of the float64 oracle on one random instance."""
    ins = case.tensors(dtype, seed, requires_grad=True)
    x, off, w, b, m = ins
    y = fn(x, off, w, b, mask=m, **case.kwargs())
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1),
                       dtype=torch.float64)
    leaves = [t for t in ins if t is not None]
    got = torch.autograd.grad(y, leaves, grad.to(dtype)) if y.numel() else None
    rins = [t.detach().to(ref_dtype).requires_grad_() if t is not None else None for t in ins]
    rx, roff, rw, rb, rm = rins
    ry = deform_conv2d_ref(rx, roff, rw, rb, mask=rm, **case.kwargs())
    rleaves = [t for t in rins if t is not None]
    want = torch.autograd.grad(ry, rleaves, grad.to(ref_dtype)) if ry.numel() else None
    names = [n for n, t in zip(("input", "offset", "weight", "bias", "mask"), ins)
             if t is not None]
    return y, ry, names, got, want


def assert_close_rel(got, want, rtol, name=""):
    """Relative to the largest magnitude of the expectation, so one tolerance fits all sizes."""
    scale = want.abs().max().clamp_min(1e-12)
    err = ((got.double() - want.double()).abs().max() / scale).item()
    assert err <= rtol, f"{name}: relative error {err:.3g} > {rtol:.3g}"
    # Guard against vacuous agreement: the expectation must not be all zeros.
    assert want.abs().max() > 0, f"{name}: expectation is all zeros"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

