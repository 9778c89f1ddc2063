"""The N-D Triton kernels at R = 1, 2, 3 against the float64 oracle: forward and all five
gradients (the library runs them for 1-D and 3-D; R=2 is the GPU benchmark's contender).

Run in the Triton interpreter on CPU (``TRITON_INTERPRET=1 python -m pytest -q
tests/triton/test_nd_kernels.py``: the variable must be set before Triton is imported), or
compiled on a GPU. Skipped otherwise. Outputs the kernels must write are filled with NaN first,
so an unwritten tile fails.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if os.environ.get("TRITON_INTERPRET") != "1" and not HAS_CUDA:
    pytest.skip("needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)
pytest.importorskip("triton")

from deformconv.ops.deform_conv.reference import deform_conv_ref  # noqa: E402 (after the skip)
from deformconv.ops.deform_conv.triton import launch_nd as nd_launch  # noqa: E402 (after the skip)
from deformconv.testing import Problem, assert_close  # noqa: E402 (after the skip)

DEV = "cuda" if HAS_CUDA else "cpu"
NAMES = ("input", "weight", "offset", "mask", "bias")

CASES = {
    "1d": Problem(N=2, C=4, O=6, size=(21,), kernel=(3,), padding=1),
    "1d-groups-og-stride-dil": Problem(N=2, C=6, O=4, size=(19,), kernel=(3,), stride=2,
                                       padding=2, dilation=2, groups=2, offset_groups=3),
    "1d-v1-nobias": Problem(N=1, C=3, O=5, size=(17,), kernel=(4,), padding=1, mask=False,
                            bias=False),
    "2d": Problem(N=2, C=4, O=5, size=(5, 6), kernel=(3, 3), padding=1),
    "2d-groups-og-stride-dil-asym": Problem(N=2, C=6, O=4, size=(7, 6), kernel=(3, 2),
                                            stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                                            groups=2, offset_groups=3),
    "2d-v1-nobias": Problem(N=1, C=3, O=5, size=(4, 5), kernel=(2, 3), padding=(0, 1),
                            mask=False, bias=False),
    "3d": Problem(N=1, C=4, O=5, size=(3, 4, 5), kernel=(3, 2, 3), padding=(1, 0, 1)),
    "3d-groups-og-asym": Problem(N=2, C=4, O=4, size=(3, 5, 4), kernel=(2, 3, 2),
                                 stride=(1, 2, 1), padding=(0, 1, 1), dilation=(2, 1, 1),
                                 groups=2, offset_groups=2, mask=False),
    "3d-size1": Problem(N=1, C=2, O=3, size=(1, 1, 3), kernel=(3, 3, 3), padding=1),
    # Zero offsets with padding: border taps sit exactly at -1 (one-sided derivative +I[0])
    # and every position is an integer.
    "1d-integer": Problem(N=1, C=2, O=3, size=(9,), kernel=(3,), padding=1, offset_scale=0.0),
    "2d-integer": Problem(N=1, C=2, O=3, size=(3, 4), kernel=(3, 3), padding=1,
                          offset_scale=0.0),
    "3d-integer": Problem(N=1, C=2, O=3, size=(2, 3, 3), kernel=(3, 3, 3), padding=1,
                          offset_scale=0.0),
}
# One case per dimensionality for the tests parametrised over R.
BY_R = {1: CASES["1d"], 2: CASES["2d"], 3: CASES["3d"]}


def _check(prob: Problem, dtype=torch.float32, tensors=None):
    t = tensors or prob.tensors(dtype, device=DEV)
    params = [list(prob.strides), list(prob.paddings), list(prob.dilations)]
    args = (t["input"], t["weight"], t["offset"], t["mask"], t["bias"], *params)
    out = nd_launch.deform_conv_fwd(*args)
    go = prob.grad_out(dtype, device=DEV)
    grads = nd_launch.deform_conv_bwd(go, *args, [True, True, True, True])
    ref = {k: (v.detach().cpu().double().requires_grad_() if v is not None else None)
           for k, v in t.items()}
    want = deform_conv_ref(ref["input"], ref["offset"], ref["weight"], ref["bias"],
                              *params, ref["mask"])
    assert out.dtype == dtype
    assert_close(out, want, dtype, "output")
    leaves = [n for n in NAMES if ref[n] is not None]
    rgrads = dict(zip(leaves, torch.autograd.grad(want, [ref[n] for n in leaves],
                                                  go.cpu().double())))
    for name, g in zip(NAMES, grads):
        if ref[name] is None:
            assert g.numel() == 0, name
            continue
        assert g.dtype == dtype, name
        assert_close(g, rgrads[name], dtype, name)


@pytest.mark.parametrize("name", list(CASES))
def test_kernels_match_oracle(name):
    _check(CASES[name])


@pytest.mark.parametrize("R", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype, R):
    _check(BY_R[R].with_(offset_scale=1.0), dtype)


@pytest.mark.parametrize("R", [1, 2, 3])
def test_64bit_indices(monkeypatch, R):
    from deformconv.ops.triton import spec

    seen = []
    real = spec.index_64
    monkeypatch.setattr(spec, "INDEX_64_FROM", 1)
    monkeypatch.setattr(spec, "index_64", lambda *s: seen.append(real(*s)) or seen[-1])
    _check(BY_R[R])
    assert seen and all(seen)


@pytest.mark.parametrize("R", [1, 2, 3])
def test_hostile_offsets(R):
    prob = BY_R[R]
    t = prob.tensors(torch.float32, device=DEV)  # the launchers take no float64
    off = t["offset"].clone()
    off.view(-1)[::7] = float("nan")
    off.view(-1)[1::11] = float("inf")
    off.view(-1)[2::13] = -1e30
    params = [list(prob.strides), list(prob.paddings), list(prob.dilations)]
    args = (t["input"], t["weight"], off, t["mask"], t["bias"], *params)
    out = nd_launch.deform_conv_fwd(*args)
    want = deform_conv_ref(t["input"].double(), off.double(), t["weight"].double(),
                              t["bias"].double(), *params, t["mask"].double())
    assert_close(out, want, torch.float32, "output")
    grads = nd_launch.deform_conv_bwd(prob.grad_out(torch.float32, device=DEV), *args,
                                      [True] * 4)
    for g in grads:
        assert torch.isfinite(g).all()
    g_off = grads[2]
    assert (g_off.view(-1)[::7] == 0).all() and (g_off.view(-1)[1::11] == 0).all()


@pytest.mark.parametrize("R", [1, 2, 3])
def test_batch_zero(R):
    prob = BY_R[R].with_(N=0)
    t = prob.tensors(torch.float32, device=DEV)  # the launchers take no float64
    params = [list(prob.strides), list(prob.paddings), list(prob.dilations)]
    args = (t["input"], t["weight"], t["offset"], t["mask"], t["bias"], *params)
    assert nd_launch.deform_conv_fwd(*args).shape == (0, prob.O, *prob.out)
    grads = nd_launch.deform_conv_bwd(prob.grad_out(torch.float32, device=DEV), *args,
                                      [True] * 4)
    assert grads[1].shape == t["weight"].shape and not grads[1].any()
