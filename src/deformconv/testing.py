"""One problem generator and one closeness helper, for the tests, the benchmarks and the GPU
script alike (as ``torch.testing`` serves PyTorch's own tests).

A :class:`Problem` is one call of a deformable convolution of any dimensionality: shapes,
stride/padding/dilation, groups, offset groups, whether it has a mask and a bias. Its
:meth:`Problem.tensors` draws the arguments from a seeded generator in float64 and rounds them
once to the dtype under test, so an oracle that reads them in float64 sees exactly the kernel's
inputs.

:func:`assert_close` compares with one per-dtype tolerance table (:data:`TOLERANCE`), relative to
``max(1, max |expected|)``, and refuses vacuous agreement (an all-zero expectation) and
non-finite results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from .ops import geometry

ARGS = ("input", "offset", "weight", "bias", "mask")

# Largest error allowed, relative to max(1, max |expected|), per dtype of the tensors under
# test, for the output and every gradient alike. float16/bfloat16 inputs are rounded once, then
# computed in float32, so their error is the rounding of the result (half an ulp: 4.9e-4 and
# 3.9e-3). Set near 10x the worst case measured over CASES and 40 random configurations, two
# seeds each, pure-PyTorch kernels on CPU: float64 5.9e-16, float32 1.2e-6, float16 4.8e-4,
# bfloat16 3.8e-3.
TOLERANCE: Dict[torch.dtype, float] = {
    torch.float64: 1e-14,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 4e-2,
}


def _tuple(v, n: int) -> Tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


@dataclass(frozen=True)
class Problem:
    """One deformable convolution call, ``R = len(size)`` spatial dimensions.

    ``stride``, ``padding`` and ``dilation`` may be ints (the same in every dimension) or
    tuples of ``R`` ints. ``offset_scale`` is the standard deviation of the offsets in pixels.
    """

    N: int = 2
    C: int = 4
    O: int = 6
    size: Tuple[int, ...] = (6, 7)
    kernel: Tuple[int, ...] = (3, 3)
    stride: object = 1
    padding: object = 1
    dilation: object = 1
    groups: int = 1
    offset_groups: int = 1
    mask: bool = True
    bias: bool = True
    offset_scale: float = 2.0
    weight_scale: float = 1.0
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def ndim(self) -> int:
        return len(self.size)

    @property
    def strides(self) -> Tuple[int, ...]:
        return _tuple(self.stride, self.ndim)

    @property
    def paddings(self) -> Tuple[int, ...]:
        return _tuple(self.padding, self.ndim)

    @property
    def dilations(self) -> Tuple[int, ...]:
        return _tuple(self.dilation, self.ndim)

    @property
    def out(self) -> Tuple[int, ...]:
        return geometry.out_size(self.size, self.kernel, self.strides, self.paddings,
                                 self.dilations)

    @property
    def taps(self) -> int:
        return geometry.taps(self.kernel)

    @property
    def name(self) -> str:
        s = f"{self.N}x{self.C}x{'x'.join(map(str, self.size))}->{self.O}"
        s += f",k{'x'.join(map(str, self.kernel))}"
        for k, v in (("s", self.stride), ("p", self.padding), ("d", self.dilation),
                     ("g", self.groups), ("og", self.offset_groups)):
            s += f",{k}{v}" if not isinstance(v, tuple) else f",{k}{'x'.join(map(str, v))}"
        return s + ("" if self.mask else ",nomask") + ("" if self.bias else ",nobias")

    def kwargs(self) -> dict:
        """stride, padding and dilation as the public function takes them."""
        return dict(stride=self.strides, padding=self.paddings, dilation=self.dilations)

    def flops(self) -> int:
        """Multiply-adds x 2 of the convolution part (the same as the plain convolution's)."""
        return 2 * self.N * self.O * math.prod(self.out) * (self.C // self.groups) * self.taps

    def with_(self, **changes) -> "Problem":
        return replace(self, **changes)

    def tensors(self, dtype: torch.dtype = torch.float64, device="cpu", seed: int = 0,
                requires_grad: bool = False) -> Dict[str, Optional[Tensor]]:
        """input, offset, weight, bias, mask (None where the problem has none)."""
        g = torch.Generator().manual_seed(seed)
        R, K, o = self.ndim, self.taps, self.out
        f64 = torch.float64
        t = dict(
            input=torch.randn(self.N, self.C, *self.size, generator=g, dtype=f64),
            offset=torch.randn(self.N, R * self.offset_groups * K, *o, generator=g,
                               dtype=f64) * self.offset_scale,
            weight=torch.randn(self.O, self.C // self.groups, *self.kernel, generator=g,
                               dtype=f64) * self.weight_scale,
            bias=torch.randn(self.O, generator=g, dtype=f64) if self.bias else None,
            mask=(torch.rand(self.N, self.offset_groups * K, *o, generator=g, dtype=f64)
                  if self.mask else None),
        )
        return _rounded(t, dtype, device, ARGS if requires_grad else ())

    def grad_out(self, dtype: torch.dtype = torch.float64, device="cpu",
                 seed: int = 1) -> Tensor:
        """A random upstream gradient of the output's shape."""
        return _random_grad((self.N, self.O, *self.out), dtype, device, seed)


def _rounded(t: Dict[str, Optional[Tensor]], dtype: torch.dtype, device,
             grad_names) -> Dict[str, Optional[Tensor]]:
    """float64 draws rounded once to ``dtype`` on ``device``; ``grad_names`` require grad."""
    out = {}
    for k, v in t.items():
        if v is not None:
            v = v.to(dtype).to(device)
            if k in grad_names:
                v.requires_grad_()
        out[k] = v
    return out


def _random_grad(shape, dtype: torch.dtype, device, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(device)


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max(1, max |expected|), in float64."""
    a = actual.detach().cpu().double()
    e = expected.detach().cpu().double()
    scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
    return (a - e).abs().max().item() / scale if e.numel() else 0.0


def assert_close(actual: Tensor, expected: Tensor, dtype: Optional[torch.dtype] = None,
                 name: str = "", tol: Optional[float] = None) -> float:
    """Assert ``actual`` matches ``expected`` within ``TOLERANCE[dtype]`` (or ``tol``).

    ``dtype`` defaults to ``actual.dtype``. Fails on a shape mismatch, non-finite values in
    ``actual`` where ``expected`` is finite, and an expectation that is all zeros (a check that
    could not fail). Returns the relative error.
    """
    dtype = dtype or actual.dtype
    tol = TOLERANCE[dtype] if tol is None else tol
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if expected.numel() == 0:
        return 0.0
    finite = torch.isfinite(expected.detach().cpu())
    assert torch.isfinite(actual.detach().cpu()[finite]).all(), f"{name}: non-finite values"
    assert expected.detach().abs().max() > 0, f"{name}: expectation is all zeros"
    err = relative_error(actual, expected)
    assert err <= tol, f"{name}: relative error {err:.3g} > {tol:.3g} ({dtype})"
    return err


def outputs_and_grads(fn: Callable[..., Tensor], p: Problem,
                      tensors: Dict[str, Optional[Tensor]], grad_out: Tensor
                      ) -> Dict[str, Tensor]:
    """``fn(input, offset, weight, bias, stride=..., padding=..., dilation=..., mask=...)`` on
    ``tensors`` (leaves that require gradients), and the gradient of every given argument
    under ``grad_out``: ``{"output": ..., "input": ..., ...}``."""
    t = tensors
    out = fn(t["input"], t["offset"], t["weight"], t["bias"], mask=t["mask"], **p.kwargs())
    names = [k for k in ARGS if t[k] is not None]
    res = {"output": out.detach()}
    if out.numel():
        grads = torch.autograd.grad(out, [t[k] for k in names], grad_out)
    else:  # nothing flows back through an empty output
        grads = [torch.zeros_like(t[k]) for k in names]
    res.update(zip(names, grads))
    return res


def compare_with_oracle(fn: Callable[..., Tensor], p: Problem,
                        dtype: torch.dtype = torch.float64, device="cpu", seed: int = 0,
                        oracle: Optional[Callable[..., Tensor]] = None,
                        tol: Optional[float] = None) -> Dict[str, float]:
    """Run ``fn`` on ``p``'s tensors in ``dtype`` on ``device``, and the float64 oracle
    (``deformconv.reference``) on the same rounded values; :func:`assert_close` the output and
    every gradient. Returns the relative error of each."""
    if oracle is None:
        from .ops.deform_conv.reference import deform_conv_ref as oracle
    t = p.tensors(dtype, device, seed, requires_grad=True)
    go = p.grad_out(dtype, device, seed + 1)
    got = outputs_and_grads(fn, p, t, go)
    t64 = {k: (v.detach().cpu().double().requires_grad_() if v is not None else None)
           for k, v in t.items()}
    want = outputs_and_grads(oracle, p, t64, go.cpu().double())
    errors = {}
    for k, e in want.items():
        a = got[k]
        assert a.dtype == dtype and a.device == t["input"].device, (k, a.dtype, a.device)
        if e.numel() and e.abs().max() > 0:
            errors[k] = assert_close(a, e, dtype, f"{p.name} {k}", tol)
        else:  # exactly zero (an empty batch, a bias-free corner case): so must the result be
            assert tuple(a.shape) == tuple(e.shape), k
            assert a.numel() == 0 or a.detach().abs().max() == 0, f"{k}: not zero"
            errors[k] = 0.0
    return errors


# The problems every backend runs: awkward on purpose (groups and offset groups above 1,
# asymmetric stride/padding/dilation, 1x1 images and outputs, no mask or bias, big offsets).
CASES: Dict[str, Problem] = {
    "default": Problem(),
    "v1-no-bias": Problem(mask=False, bias=False),
    "groups2": Problem(C=4, O=6, groups=2),
    "offset-groups2": Problem(C=4, offset_groups=2),
    "groups2-offset-groups3": Problem(C=6, O=4, groups=2, offset_groups=3),
    "depthwise": Problem(C=4, O=8, groups=4, offset_groups=4),
    "asym-stride-pad-dil": Problem(size=(9, 8), kernel=(3, 2), stride=(2, 1), padding=(1, 2),
                                   dilation=(1, 2)),
    "stride2-dil2": Problem(size=(11, 10), stride=2, dilation=2, padding=2),
    "kernel1x1": Problem(kernel=(1, 1), padding=0),
    "kernel7x7": Problem(size=(8, 9), kernel=(7, 7), padding=3, C=2, O=3),
    "kernel5x3": Problem(size=(8, 6), kernel=(5, 3), padding=(2, 0)),
    "image1x1": Problem(size=(1, 1)),
    "output1x1": Problem(size=(3, 3), padding=0),
    "row-image": Problem(size=(1, 9), kernel=(1, 3), padding=(0, 1)),
    "big-offsets": Problem(offset_scale=8.0),
    "batch1-one-channel": Problem(N=1, C=1, O=1),
}
# Deformable RoI pooling ---------------------------------------------------------------------

ROI_KINDS = ("normal", "tiny", "large", "degenerate", "inverted", "partly_outside",
             "wholly_outside")


@dataclass(frozen=True)
class RoIProblem:
    """One deformable RoI pooling call: an ``(N, C, H, W)`` feature map and ``R`` regions
    drawn from ``kinds`` in turn (:data:`ROI_KINDS`), given in image coordinates (feature
    coordinates / ``spatial_scale``). ``offset_scale`` is the offsets' standard deviation
    (normalised units: ``gamma * offset`` is a fraction of the region's size); ``offset=False``
    passes ``None``."""

    N: int = 2
    C: int = 3
    H: int = 7
    W: int = 9
    output_size: Tuple[int, int] = (3, 2)
    R: int = 14
    spatial_scale: float = 0.5
    sampling_ratio: int = 0
    gamma: float = 0.1
    offset: bool = True
    offset_scale: float = 1.0
    kinds: Tuple[str, ...] = ROI_KINDS

    def kwargs(self) -> dict:
        return dict(output_size=self.output_size, spatial_scale=self.spatial_scale,
                    sampling_ratio=self.sampling_ratio, gamma=self.gamma)

    def with_(self, **changes) -> "RoIProblem":
        return replace(self, **changes)

    def _rois(self, g: torch.Generator) -> Tensor:
        H, W = float(self.H), float(self.W)
        rows = []
        for r in range(self.R):
            kind = self.kinds[r % len(self.kinds)]
            u = torch.rand(6, generator=g, dtype=torch.float64).tolist()
            b = float(int(u[5] * self.N))
            cx, cy = u[0] * (W - 1), u[1] * (H - 1)
            if kind == "normal":
                w, h = 1 + u[2] * (W - 1), 1 + u[3] * (H - 1)
            elif kind == "tiny":
                w, h = u[2] * 0.8, u[3] * 0.8
            elif kind == "large":
                w, h = (1.5 + u[2]) * W, (1.5 + u[3]) * H
            elif kind == "degenerate":
                w, h = (0.0, 1 + u[3] * H) if u[4] < 0.5 else (1 + u[2] * W, 0.0)
            elif kind == "inverted":
                w, h = -(1 + u[2] * W / 2), -(0.5 + u[3] * H / 2) * (1 if u[4] < 0.7 else -1)
            elif kind == "partly_outside":
                cx, cy = (-1 if u[4] < 0.5 else W) + u[0], (-1 if u[4] < 0.5 else H) + u[1]
                w, h = 1 + u[2] * W, 1 + u[3] * H
            elif kind == "wholly_outside":
                cx, cy = W + 3 + u[0] * W, -4 - u[1] * H
                w, h = 1 + u[2] * 3, 1 + u[3] * 3
            else:
                raise ValueError(f"unknown RoI kind {kind!r}")
            x1, y1 = cx - w / 2, cy - h / 2
            rows.append([b, x1, y1, x1 + w, y1 + h])
        return torch.tensor(rows, dtype=torch.float64).view(-1, 5) * torch.tensor(
            [1.0] + [1.0 / self.spatial_scale] * 4, dtype=torch.float64)

    def tensors(self, dtype: torch.dtype = torch.float64, device="cpu", seed: int = 0,
                requires_grad: bool = False) -> Dict[str, Optional[Tensor]]:
        """input, rois, offset (None without offsets), drawn in float64, rounded once to
        ``dtype``. ``requires_grad`` applies to input and offset (rois get no gradient)."""
        g = torch.Generator().manual_seed(seed)
        ph, pw = self.output_size
        t = dict(input=torch.randn(self.N, self.C, self.H, self.W, generator=g,
                                   dtype=torch.float64),
                 rois=self._rois(g),
                 offset=(torch.randn(self.R, 2, ph, pw, generator=g, dtype=torch.float64)
                         * self.offset_scale if self.offset else None))
        return _rounded(t, dtype, device, ("input", "offset") if requires_grad else ())

    def grad_out(self, dtype: torch.dtype = torch.float64, device="cpu",
                 seed: int = 1) -> Tensor:
        return _random_grad((self.R, self.C, *self.output_size), dtype, device, seed)
