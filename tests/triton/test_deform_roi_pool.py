"""Triton kernels of deformable RoI pooling against the float64 oracle and the pure-PyTorch path.

Runs compiled on a GPU, or in the Triton interpreter on CPU tensors without one:

    TRITON_INTERPRET=1 python -m pytest -q tests/triton/test_deform_roi_pool.py

(the variable must be set before Triton is imported; without it and without CUDA this module
skips). Outputs are allocated NaN-filled (``conftest.py``'s ``nan_fill``), so a tile the
kernel leaves unwritten fails. Interpreter channel blocks are 4 wide, so every case spans
several blocks.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1 (set before Triton is imported)",
                allow_module_level=True)
pytest.importorskip("triton")

from deformconv.ops.roi_pool import torch_kernels as roi_pool_torch  # noqa: E402
from deformconv.ops.roi_pool.reference import deform_roi_pool_ref  # noqa: E402
from deformconv.ops.roi_pool.triton import launch  # noqa: E402
from deformconv.testing import RoIProblem, assert_close  # noqa: E402

DEV = "cuda" if HAS_CUDA else "cpu"
# Small problems: the interpreter runs each program in Python. Seven regions, one of each kind.
SMALL = dict(H=5, W=6, R=7, output_size=(2, 2))


def _both(p: RoIProblem, dtype, seed=0):
    """(output, grad_input, grad_offset) of the Triton launchers and of the oracle."""
    t = p.tensors(dtype, DEV, seed)
    args = (t["input"], t["rois"], t["offset"], *p.output_size, p.spatial_scale,
            p.sampling_ratio, p.gamma)
    go = p.grad_out(dtype, DEV)
    out = launch.deform_roi_pool_fwd(*args)
    gi, goff = launch.deform_roi_pool_bwd(go, *args, True, True)
    c = {k: (v.cpu() if v is not None else None) for k, v in t.items()}
    want = deform_roi_pool_ref(c["input"], c["rois"], c["offset"], p.output_size,
                               p.spatial_scale, p.sampling_ratio, p.gamma, go.cpu())
    return (out, gi, goff), want


@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("gamma", [0.1, 0.5])
@pytest.mark.parametrize("offset", [True, False])
def test_against_oracle_float32(sampling_ratio, gamma, offset):
    p = RoIProblem(C=6, sampling_ratio=sampling_ratio, gamma=gamma, offset=offset, **SMALL)
    (out, gi, goff), (w_out, w_gi, w_goff) = _both(p, torch.float32)
    assert out.dtype == torch.float32
    assert_close(out, w_out, name="output")
    assert_close(gi, w_gi, name="input")
    if offset:
        assert_close(goff, w_goff, name="offset")
    else:
        assert goff.numel() == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    p = RoIProblem(C=5, spatial_scale=1.0, gamma=0.5, **SMALL)
    (out, gi, goff), (w_out, w_gi, w_goff) = _both(p, dtype)
    assert out.dtype == gi.dtype == goff.dtype == dtype
    for name, a, b in (("output", out, w_out), ("input", gi, w_gi), ("offset", goff, w_goff)):
        assert_close(a, b, dtype, name)


@pytest.mark.parametrize("shape", [dict(H=1, W=5, C=3, R=7), dict(C=9, R=7, output_size=(1, 4)),
                                   dict(N=1, C=1, R=3, output_size=(2, 2))])
def test_awkward_shapes_match_torch_path(shape):
    p = RoIProblem(**shape)
    t = p.tensors(torch.float32, DEV)
    args = (t["input"], t["rois"], t["offset"], *p.output_size, p.spatial_scale,
            p.sampling_ratio, p.gamma)
    go = p.grad_out(torch.float32, DEV)
    assert_close(launch.deform_roi_pool_fwd(*args), roi_pool_torch.deform_roi_pool_fwd(*args))
    got = launch.deform_roi_pool_bwd(go, *args, True, True)
    want = roi_pool_torch.deform_roi_pool_bwd(go, *args, True, True)
    assert_close(got[0], want[0], name="input")
    if want[1].any():
        assert_close(got[1], want[1], name="offset")
    else:
        assert not got[1].any()


def test_hostile_values_and_zero_regions():
    x = torch.randn(2, 5, 6, 7, device=DEV)
    inf, nan, big = float("inf"), float("nan"), 1e30
    rois = torch.tensor([[0, nan, 0, 4, 4], [1, -inf, -inf, inf, inf], [1, -big, -big, big, big],
                         [0, 1, 1, 5, 5], [1, 1, 1, 5, 5], [3.0, 1, 1, 5, 5]], device=DEV)
    off = torch.zeros(6, 2, 2, 2, device=DEV)
    off[3, 0, 0, 0] = nan
    off[4] = inf
    go = torch.randn(6, 5, 2, 2, device=DEV)
    for sr in (0, 2):
        args = (x, rois, off, 2, 2, 1.0, sr, 0.1)
        out = launch.deform_roi_pool_fwd(*args)
        gi, goff = launch.deform_roi_pool_bwd(go, *args, True, True)
        ref = roi_pool_torch.deform_roi_pool_fwd(*args)
        rgi, rgoff = roi_pool_torch.deform_roi_pool_bwd(go, *args, True, True)
        assert torch.isfinite(out).all() and torch.isfinite(gi).all()
        assert torch.isfinite(goff).all()
        # row 5's batch index 3 is outside the batch (the public function refuses it; the
        # kernel pools it to 0)
        assert not out[[0, 1, 5]].any() and not out[3, :, 0, 0].any() and not out[4].any()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gi, rgi, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(goff, rgoff, rtol=1e-5, atol=1e-6)
    empty = launch.deform_roi_pool_fwd(x, rois[:0], off[:0], 2, 2, 1.0, 0, 0.1)
    assert empty.shape == (0, 5, 2, 2)
    gi, goff = launch.deform_roi_pool_bwd(empty, x, rois[:0], off[:0], 2, 2, 1.0, 0, 0.1,
                                          True, True)
    assert gi.shape == x.shape and not gi.any() and goff.shape == (0, 2, 2, 2)


def test_index_64_path(monkeypatch):
    p = RoIProblem(C=6, **SMALL)
    t = p.tensors(torch.float32, DEV)
    args = (t["input"], t["rois"], t["offset"], *p.output_size, p.spatial_scale,
            p.sampling_ratio, p.gamma)
    go = p.grad_out(torch.float32, DEV)
    a = launch.deform_roi_pool_fwd(*args)
    ga = launch.deform_roi_pool_bwd(go, *args, True, True)
    from deformconv.ops.triton import spec

    monkeypatch.setattr(spec, "INDEX_64_FROM", 1)
    assert launch._index_64(1, 1, 1, 1, 1, 1, 1)
    b = launch.deform_roi_pool_fwd(*args)
    gb = launch.deform_roi_pool_bwd(go, *args, True, True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-6)


def test_deterministic_mode_runs_the_backward_on_pure_pytorch():
    """The backward's input gradient scatters with atomics (NONDETERMINISTIC): under
    deterministic mode dispatch runs it on the pure-PyTorch kernels."""
    import deformconv

    assert "deform_roi_pool_bwd" in launch.NONDETERMINISTIC
    p = RoIProblem(C=6, **SMALL)
    t = p.tensors(torch.float32, DEV)
    args = (t["input"], t["rois"], t["offset"], *p.output_size, p.spatial_scale,
            p.sampling_ratio, p.gamma)
    go = p.grad_out(torch.float32, DEV)
    torch.use_deterministic_algorithms(True)
    try:
        with deformconv.use_backend("triton"):
            gi, goff = torch.ops.deformconv.deform_roi_pool_backward(go, *args, True, True)
    finally:
        torch.use_deterministic_algorithms(False)
    want = roi_pool_torch.deform_roi_pool_bwd(go, *args, True, True)
    torch.testing.assert_close(gi, want[0], rtol=0, atol=0)
    torch.testing.assert_close(goff, want[1], rtol=0, atol=0)
    assert goff.any()


def test_report_kernels_describe_the_launched_kernels():
    import inspect

    from deformconv.ops.roi_pool.triton import kernels as roi_pool_kernels

    specs = {s.name: s for s in roi_pool_kernels.KERNEL_SPECS}
    assert {"deform_roi_pool_fwd", "deform_roi_pool_bwd"} <= set(specs)
    for s in specs.values():
        types, consts = s.signature("bf16", index_64=True)
        args = set(s.fn.arg_names)
        assert {a for a in args if a.endswith("_ptr")} <= set(types), s.name
        params = inspect.signature(s.fn.fn).parameters.values()  # JIT or interpreted
        constexprs = {p.name for p in params if "constexpr" in str(p.annotation)}
        assert set(consts) | {"BLOCK_C"} == constexprs, s.name
        assert [c.kwargs["BLOCK_C"] for c in s.configs["half"]] == list(launch.GPU_BLOCKS_C)


def test_float32_rois_with_bfloat16_features():
    """float32 boxes with bfloat16 features: the kernels read the boxes in float32, as the
    pure-PyTorch path does (forward and both gradients)."""
    p = RoIProblem(C=6, sampling_ratio=0, **SMALL)
    t = p.tensors(torch.bfloat16, DEV, 0)
    rois = p.tensors(torch.float32, DEV, 0)["rois"]
    args = (t["input"], rois, t["offset"], *p.output_size, p.spatial_scale,
            p.sampling_ratio, p.gamma)
    go = p.grad_out(torch.bfloat16, DEV)
    got = (launch.deform_roi_pool_fwd(*args), *launch.deform_roi_pool_bwd(go, *args, True, True))
    want = (roi_pool_torch.deform_roi_pool_fwd(*args),
            *roi_pool_torch.deform_roi_pool_bwd(go, *args, True, True))
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16
        assert_close(g, w, name="triton vs torch, float32 rois")
