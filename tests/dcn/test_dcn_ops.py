"""dcnv3 / dcnv4 against the float64 oracle: outputs and gradients, every dtype, gradcheck,
the fused layout, hostile offsets, chunking and determinism."""

from __future__ import annotations

import pytest
import torch

import deformconv
from deformconv.ops.dcnv3.reference import dcnv3_ref
from deformconv.ops.deform_conv import torch_kernels as torch_impl
from deformconv.testing import TOLERANCE, assert_close
from deformconv.testing_dcn import CASES, LEAVES, DCNProblem, check, run_both


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_matches_oracle(name):
    got, want = run_both(CASES[name], torch.float64)
    check(got, want, torch.float64, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["default", "remove-center-5x3", "asym", "offset-scale"])
def test_low_precision_matches_oracle(name, dtype):
    got, want = run_both(CASES[name], dtype)
    check(got, want, dtype, name)


@pytest.mark.parametrize("seed", range(6))
def test_random_configurations(seed):
    """Random kernels (any size), strides, pads, dilations, groups, group channels."""
    g = torch.Generator().manual_seed(100 + seed)

    def r(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    kh, kw = r(1, 4), r(1, 4)
    rc = kh % 2 == 1 and kw % 2 == 1 and kh * kw > 1 and bool(r(0, 1))
    p = DCNProblem(N=r(1, 2), H=r(3, 7), W=r(3, 7), group=r(1, 3), group_channels=r(1, 5),
                   kernel=(kh, kw), stride=(r(1, 2), r(1, 2)), pad=(r(0, 2), r(0, 2)),
                   dilation=(r(1, 2), r(1, 2)), offset_scale=[0.5, 1.0, 2.0][r(0, 2)],
                   remove_center=rc)
    if min(p.out) < 1:
        p = p.with_(pad=(3, 3))
    got, want = run_both(p, torch.float64, seed=seed)
    check(got, want, torch.float64, str(p))
    got, want = run_both(p, torch.float32, seed=seed)
    check(got, want, torch.float32, str(p))


@pytest.mark.parametrize("name", ["default", "remove-center", "asym", "offset-scale"])
def test_gradcheck(name):
    p = CASES[name].with_(N=1)
    t = p.tensors(requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: deformconv.dcnv3(*a, *p.params()),
                                    [t[k] for k in LEAVES])
    assert torch.autograd.gradcheck(lambda *a: deformconv.dcnv4(*a, *p.params()),
                                    [t["input"], t["offset_mask"]])


@pytest.mark.parametrize("name", ["default", "remove-center-5x3", "kernel5x4", "groups4"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dcnv4_equals_dcnv3_on_split_tensors(name, dtype):
    """Outputs and gradients bitwise equal; the padding columns get gradient 0."""
    p = CASES[name]
    t = p.tensors(dtype, requires_grad=True)
    y3 = deformconv.dcnv3(t["input"], t["offset"], t["mask"], *p.params())
    x4 = t["input"].detach().clone().requires_grad_()
    y4 = deformconv.dcnv4(x4, t["offset_mask"], *p.params())
    assert torch.equal(y3, y4)
    g3 = torch.autograd.grad(y3, [t["input"], t["offset"], t["mask"]], t["grad_out"])
    g4 = torch.autograd.grad(y4, [x4, t["offset_mask"]], t["grad_out"])
    assert torch.equal(g3[0], g4[0])
    G, P = p.group, p.points
    per = g4[1][..., :G * 3 * P].unflatten(-1, (G, 3 * P))
    assert torch.equal(per[..., :2 * P].flatten(-2), g3[1])
    assert torch.equal(per[..., 2 * P:].flatten(-2), g3[2])
    pad = g4[1][..., G * 3 * P:]
    assert pad.shape[-1] == p.om_width - G * 3 * P
    assert pad.numel() == 0 or pad.abs().max() == 0


def test_dcnv4_padding_columns_never_read():
    p = CASES["default"]  # 2 groups * 27 = 54 columns, 2 of padding
    t = p.tensors()
    om = t["offset_mask"].clone()
    om[..., 54:] = float("nan")
    y = deformconv.dcnv4(t["input"], om, *p.params())
    assert torch.equal(y, deformconv.dcnv4(t["input"], t["offset_mask"], *p.params()))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e30, -1e30,
                                   -1.0 - 1e-12, 6.0])
def test_hostile_offsets(value):
    """Offsets that leave the image or are not finite: the sample contributes 0 and its offset
    and mask gradients are 0; the rest as the oracle."""
    p = DCNProblem(N=1, H=4, W=5, kernel=(3, 3), pad=(1, 1))
    t = p.tensors()
    off = t["offset"].clone()
    off[0, :, :, 0::7] = value  # a spread of taps, dx and dy alike
    t["offset"] = off
    leaves = {k: t[k].clone().requires_grad_() for k in LEAVES}
    y = deformconv.dcnv3(*leaves.values(), *p.params())
    assert torch.isfinite(y).all()
    grads = torch.autograd.grad(y, list(leaves.values()), t["grad_out"])
    for gr in grads:
        assert torch.isfinite(gr).all()
    ref_leaves = {k: t[k].clone().requires_grad_() for k in LEAVES}
    ref = dcnv3_ref(*ref_leaves.values(), *p.params())
    assert_close(y, ref)
    ref_grads = torch.autograd.grad(ref, list(ref_leaves.values()), t["grad_out"])
    for a, b in zip(grads, ref_grads):
        assert_close(a, b)
    if not -1e29 < value < 1e29:
        assert grads[1][0, :, :, 0::7].abs().max() == 0


def test_chunked_equals_unchunked(monkeypatch):
    """Row chunks (a tiny budget) give the same numbers as whole-batch chunks."""
    p = CASES["stride2-dil2"].with_(N=3)
    t = p.tensors(requires_grad=True)

    def both():
        y = deformconv.dcnv3(*(t[k] for k in LEAVES), *p.params())
        return (y, *torch.autograd.grad(y, [t[k] for k in LEAVES], t["grad_out"]))

    whole = both()
    monkeypatch.setattr(torch_impl, "COLUMN_BUDGET_BYTES", 1)
    rows = both()
    for a, b in zip(whole, rows):
        assert_close(a, b, tol=1e-14)


def test_backward_is_deterministic():
    p = CASES["far-offsets"].with_(N=2, H=9, W=9)
    t = p.tensors(torch.float32, requires_grad=True)
    runs = []
    for _ in range(2):
        y = deformconv.dcnv3(*(t[k] for k in LEAVES), *p.params())
        runs.append(torch.autograd.grad(y, [t[k] for k in LEAVES], t["grad_out"]))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_sort_padding_changes_nothing(monkeypatch):
    """The input gradient's scatter pads short key lists up to the radix sort's size; without
    the padding (every list sorted as it is) the gradients are bitwise the same."""
    from deformconv.ops.dcnv3 import torch_kernels as dcnv3_kernels

    p = CASES["far-offsets"].with_(N=2, H=9, W=9)
    t = p.tensors(torch.float32, requires_grad=True)

    def grads():
        y = deformconv.dcnv3(*(t[k] for k in LEAVES), *p.params())
        return torch.autograd.grad(y, [t[k] for k in LEAVES], t["grad_out"])

    padded = grads()
    monkeypatch.setattr(dcnv3_kernels, "RADIX_SORT_FROM", 0)
    for a, b in zip(padded, grads()):
        assert torch.equal(a, b)


def test_non_contiguous_arguments():
    p = CASES["groups4"]
    t = p.tensors()
    args = [t[k].transpose(1, 2).contiguous().transpose(1, 2) for k in LEAVES]
    assert not args[0].is_contiguous()
    assert_close(deformconv.dcnv3(*args, *p.params()),
                 deformconv.dcnv3(*(t[k] for k in LEAVES), *p.params()), tol=0)


def test_im2col_step_keyword_has_no_effect():
    p = CASES["default"]
    t = p.tensors()
    a = deformconv.dcnv3(*(t[k] for k in LEAVES), *p.params(), im2col_step=64)
    b = deformconv.dcnv4(t["input"], t["offset_mask"], *p.params(), im2col_step=1)
    assert torch.equal(a, deformconv.dcnv3(*(t[k] for k in LEAVES), *p.params()))
    assert torch.equal(a, b)


def test_tolerance_table_is_the_shared_one():
    assert set(TOLERANCE) >= {torch.float64, torch.float32, torch.float16, torch.bfloat16}
