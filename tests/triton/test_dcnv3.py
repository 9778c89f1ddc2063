"""The dcnv3 / dcnv4 Triton kernels (interpreter on CPU, compiled on a GPU) against the
float64 oracle: outputs and gradients, the fused layout, hostile offsets, determinism, 64-bit
indices. Buffers the kernels must write completely are NaN-filled first."""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if os.environ.get("TRITON_INTERPRET") != "1" and not HAS_CUDA:
    pytest.skip("needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)
pytest.importorskip("triton")

import deformconv  # noqa: E402 (after the skip)
from deformconv.ops import dispatch  # noqa: E402
from deformconv.testing import assert_close  # noqa: E402
from deformconv.testing_dcn import CASES, LEAVES, DCNProblem, check, run_both  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    from deformconv.ops.dcnv3.triton import launch

    monkeypatch.setattr(launch, "DEBUG_FILL_NAN", True)
    with deformconv.use_backend("triton"):
        yield
    assert not dispatch._failed, dispatch._failed  # no silent fallback to PyTorch


def test_triton_kernels_run(monkeypatch):
    """The Triton launchers are the ones called (not the PyTorch fallback)."""
    from deformconv.ops.dcnv3 import torch_kernels

    def refuse(*a):
        raise AssertionError("pure-PyTorch kernel called")

    monkeypatch.setattr(torch_kernels, "forward", refuse)
    p = CASES["default"]
    t = p.tensors(torch.float32, DEVICE)
    deformconv.dcnv3(*(t[k] for k in LEAVES), *p.params())
    deformconv.dcnv4(t["input"], t["offset_mask"], *p.params())


@pytest.mark.parametrize("name", ["default", "groups4", "remove-center-5x3", "asym",
                                  "offset-scale", "stride2-dil2", "kernel1", "1x1-image",
                                  "far-offsets", "batch0"])
def test_float32_matches_oracle(name):
    got, want = run_both(CASES[name].with_(group_channels=5) if name == "default" else
                         CASES[name], torch.float32, DEVICE)
    check(got, want, torch.float32, name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_oracle(dtype):
    got, want = run_both(CASES["remove-center"], dtype, DEVICE)
    check(got, want, dtype, "remove-center")


@pytest.mark.parametrize("name", ["default", "remove-center"])
def test_dcnv4_equals_dcnv3(name):
    """The same kernels through the fused tensor's strides: outputs and gradients as dcnv3's,
    the padding columns' gradient exactly 0."""
    p = CASES[name]
    t = p.tensors(torch.float32, DEVICE, requires_grad=True)
    y3 = deformconv.dcnv3(*(t[k] for k in LEAVES), *p.params())
    x4 = t["input"].detach().clone().requires_grad_()
    y4 = deformconv.dcnv4(x4, t["offset_mask"], *p.params())
    assert_close(y4, y3, tol=1e-6)
    g3 = torch.autograd.grad(y3, [t[k] for k in LEAVES], t["grad_out"])
    gi, gom = torch.autograd.grad(y4, [x4, t["offset_mask"]], t["grad_out"])
    assert_close(gi, g3[0], tol=1e-6)
    G, P = p.group, p.points
    per = gom[..., :G * 3 * P].unflatten(-1, (G, 3 * P))
    assert_close(per[..., :2 * P].flatten(-2), g3[1], tol=1e-6)
    assert_close(per[..., 2 * P:].flatten(-2), g3[2], tol=1e-6)
    pad = gom[..., G * 3 * P:]
    assert pad.numel() == 0 or pad.abs().max() == 0


def test_hostile_offsets_stay_inside():
    p = DCNProblem(N=1, H=4, W=5)
    t = p.tensors(torch.float32, DEVICE)
    for i, v in enumerate([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, -1.0]):
        t["offset"][..., i::7] = v
    leaves = [t[k].clone().requires_grad_() for k in LEAVES]
    y = deformconv.dcnv3(*leaves, *p.params())
    grads = torch.autograd.grad(y, leaves, t["grad_out"])
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
    with deformconv.use_backend("torch"):
        ref = [a.detach().clone().requires_grad_() for a in leaves]
        y_ref = deformconv.dcnv3(*ref, *p.params())
        g_ref = torch.autograd.grad(y_ref, ref, t["grad_out"])
    assert_close(y, y_ref, tol=1e-5)
    for a, b in zip(grads, g_ref):
        assert_close(a, b, tol=1e-5)


def test_deterministic_mode_takes_the_sorted_scatter():
    p = CASES["far-offsets"]
    t = p.tensors(torch.float32, DEVICE, requires_grad=True)
    torch.use_deterministic_algorithms(True)
    try:
        y = deformconv.dcnv3(*(t[k] for k in LEAVES), *p.params())
        gi = torch.autograd.grad(y, [t["input"]], t["grad_out"])[0]
        with deformconv.use_backend("torch"):
            y0 = deformconv.dcnv3(*(t[k] for k in LEAVES), *p.params())
            gi0 = torch.autograd.grad(y0, [t["input"]], t["grad_out"])[0]
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(gi, gi0)


def test_64_bit_indices(monkeypatch):
    from deformconv.ops.triton import spec

    monkeypatch.setattr(spec, "INDEX_64_FROM", 1)
    got, want = run_both(CASES["asym"], torch.float32, DEVICE)
    check(got, want, torch.float32, "asym i64")


def test_in_the_resource_report():
    from deformconv.ops.dcnv3.triton import kernels
    from deformconv.ops.triton import report

    names = [s.name for s in report.kernel_specs()]
    assert [s.name for s in kernels.KERNEL_SPECS] == ["dcnv3_fwd", "dcnv3_bwd"]
    assert {"dcnv3_fwd", "dcnv3_bwd"} <= set(names)
