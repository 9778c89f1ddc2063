"""The float64 oracle of dcnv3/dcnv4 pins each convention of docs/dcnv3.md on its own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deformconv.ops.dcnv3.reference import dcnv3_ref
from deformconv.ops.dcnv4.reference import dcnv4_ref
from deformconv.testing import assert_close
from deformconv.testing_dcn import CASES, DCNProblem, internimage_pytorch


def _ref(p: DCNProblem, t, **changes):
    q = p.with_(**changes)
    return dcnv3_ref(t["input"], t["offset"], t["mask"], *q.params())


def test_zero_offsets_unit_mask_is_a_box_filter():
    """Grid and padding (H by pad_h, W by pad_w): zero offsets, mask 1, offset_scale 1 give a
    depthwise all-ones convolution with the same stride, padding and dilation."""
    p = DCNProblem(H=7, W=8, kernel=(3, 2), stride=(2, 1), pad=(1, 2), dilation=(1, 2))
    t = p.tensors()
    t["offset"].zero_()
    t["mask"].fill_(1)
    C = p.group * p.group_channels
    want = F.conv2d(t["input"].permute(0, 3, 1, 2), torch.ones(C, 1, *p.kernel).double(),
                    stride=p.stride, padding=p.pad, dilation=p.dilation, groups=C)
    assert_close(_ref(p, t), want.permute(0, 2, 3, 1))


@pytest.mark.parametrize("tap", range(6))
def test_tap_order_x_outer_y_inner(tap):
    """Mask one-hot at slot p reads kernel column i = p // kernel_h, row j = p % kernel_h."""
    p = DCNProblem(H=6, W=7, kernel=(3, 2), pad=(0, 0), group=1, group_channels=2)
    t = p.tensors()
    t["offset"].zero_()
    t["mask"].zero_()
    t["mask"][..., tap] = 1
    i, j = divmod(tap, 3)
    oH, oW = p.out
    want = t["input"][:, j:j + oH, i:i + oW]
    assert_close(_ref(p, t), want)


def test_offset_scale_scales_grid_spread_and_offsets():
    """x = wo - pad + c - c*s + (i*dil + dx)*s: with s = 0.5, a 3x3 grid of dilation 2 keeps its
    centre and spreads by 1 pixel; an offset of 2 moves by 1 pixel."""
    p = DCNProblem(H=6, W=7, pad=(2, 2), dilation=(2, 2), offset_scale=0.5, group=1,
                   group_channels=1)
    t = p.tensors()
    t["offset"].zero_()
    t["mask"].zero_()
    t["mask"][..., 6] = 1          # i = 2 (right column), j = 0 (top row)
    t["offset"][..., 2 * 6 + 1] = 2.0  # dy of that tap: +1 pixel after scaling
    out = _ref(p, t)
    img = F.pad(t["input"][..., 0], (2, 2, 2, 2))  # padded so pixel (y, x) is img[y+2, x+2]
    # x = wo - 2 + 2 - 1 + 2*2*0.5 = wo + 1; y = ho - 2 + 2 - 1 + (0 + 2)*0.5 = ho
    oH, oW = p.out
    want = img[:, 2:2 + oH, 3:3 + oW]
    assert_close(out[..., 0], want)


def test_remove_center_shifts_later_taps_up():
    """remove_center drops tap (kernel_w//2, kernel_h//2); later offsets and masks move up one
    slot. Equal to the full kernel with the centre's mask 0."""
    p = DCNProblem(kernel=(3, 5), pad=(1, 2), remove_center=True)
    t = p.tensors()
    full = p.with_(remove_center=False)
    G, P = p.group, p.points
    centre = (full.points - 1) // 2
    off = t["offset"].unflatten(-1, (G, P, 2))
    msk = t["mask"].unflatten(-1, (G, P))
    off_full = torch.cat([off[..., :centre, :], torch.zeros_like(off[..., :1, :]),
                          off[..., centre:, :]], -2).flatten(-3)
    msk_full = torch.cat([msk[..., :centre], torch.zeros_like(msk[..., :1]),
                          msk[..., centre:]], -1).flatten(-2)
    want = dcnv3_ref(t["input"], off_full, msk_full, *full.params())
    assert_close(_ref(p, t), want)


def test_cut_off_is_strict_and_corners_outside_read_zero():
    """-1 < y < H and -1 < x < W: just inside -1 reads a sliver of pixel 0, -1 itself and
    H reads nothing; a position in (H-1, H) reads part of the last row."""
    p = DCNProblem(H=3, W=3, kernel=(1, 1), pad=(0, 0), group=1, group_channels=1, N=1)
    t = p.tensors()
    t["mask"].fill_(1)
    img = t["input"][0, :, :, 0]
    cases = [((-1.0, 0.0), 0.0), ((-0.75, 0.0), 0.25 * img[0, 0]), ((0.0, -1.0), 0.0),
             ((2.5, 0.0), 0.5 * img[2, 0]), ((3.0, 0.0), 0.0), ((0.0, 2.25), 0.75 * img[0, 2]),
             ((float("nan"), 0.0), 0.0), ((1e30, 0.0), 0.0), ((-float("inf"), 0.0), 0.0)]
    for (dy, dx), want in cases:  # output (0, 0): base position (0, 0)
        t["offset"][0, 0, 0] = torch.tensor([dx, dy])
        got = _ref(p, t)[0, 0, 0, 0]
        assert abs(float(got) - float(want)) < 1e-15, ((dy, dx), got, want)


def test_one_sided_derivative_at_integer_positions():
    """At an integer position the offset gradient is the forward difference (floor held)."""
    p = DCNProblem(H=4, W=4, kernel=(1, 1), pad=(0, 0), group=1, group_channels=1, N=1)
    t = p.tensors()
    t["mask"].fill_(1)
    t["offset"].zero_()
    off = t["offset"].requires_grad_()
    _ref(p, {**t, "offset": off})[0, 1, 1, 0].backward()
    img = t["input"][0, :, :, 0]
    assert float(off.grad[0, 1, 1, 0]) == pytest.approx(float(img[1, 2] - img[1, 1]))
    assert float(off.grad[0, 1, 1, 1]) == pytest.approx(float(img[2, 1] - img[1, 1]))


@pytest.mark.parametrize("name", ["default", "asym", "offset-scale", "remove-center",
                                  "stride2-dil2", "far-offsets"])
def test_matches_internimage_formulation(name):
    """InternImage's grid_sample formulation (padding as the CUDA kernel) agrees with the
    oracle to float64 rounding, gradients included."""
    p = CASES[name]
    t = p.tensors(requires_grad=True)
    args = (t["input"], t["offset"], t["mask"], *p.params())
    want, got = dcnv3_ref(*args), internimage_pytorch(*args)
    assert_close(got, want, tol=1e-12)
    leaves = [t["input"], t["offset"], t["mask"]]
    g_want = torch.autograd.grad(want, leaves, t["grad_out"])
    g_got = torch.autograd.grad(got, leaves, t["grad_out"])
    for a, b, n in zip(g_got, g_want, ("input", "offset", "mask")):
        assert_close(a, b, tol=1e-12, name=n)


def test_internimage_as_written_swaps_pad_h_and_pad_w():
    """Upstream's pure-PyTorch function pads H by pad_w and W by pad_h: it equals the oracle
    with the two swapped, and differs from it when they differ."""
    p = DCNProblem(H=6, W=6, kernel=(3, 3), pad=(2, 1))
    swapped = p.with_(pad=(1, 2))
    t = swapped.tensors()
    args = (t["input"], t["offset"], t["mask"])
    written = internimage_pytorch(*args, *p.params(), pad_as_written=True)
    assert_close(written, dcnv3_ref(*args, *swapped.params()), tol=1e-12)
    assert (written - internimage_pytorch(*args, *swapped.params())).abs().max() < 1e-12
    # the oracle with the pads as given reads a different grid (its output is 4x8, not 8x4)
    assert p.out != swapped.out


def test_dcnv4_oracle_is_dcnv3_on_split_tensors():
    p = CASES["groups4"]
    t = p.tensors()
    assert_close(dcnv4_ref(t["input"], t["offset_mask"], *p.params()), _ref(p, t), tol=0)
