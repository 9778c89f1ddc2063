"""deform_conv2d against the float64 oracle: forward, every gradient, the conventions' rules."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deformconv.ops.deform_conv
from deformconv import deform_conv2d
from deformconv.ops import torch_impl
from deformconv.reference import deform_conv2d_ref

from conftest import Case, assert_close_rel, run_both

GRID = {
    "default": Case(),
    "v1-no-bias": Case(mask=False, bias=False),
    "groups2": Case(C=4, O=6, groups=2),
    "offset-groups2": Case(C=4, offset_groups=2),
    "groups2-offset-groups3": Case(C=6, O=4, groups=2, offset_groups=3),
    "depthwise": Case(C=4, O=8, groups=4, offset_groups=4),
    "asym-stride-pad-dil": Case(H=9, W=8, kernel=(3, 2), stride=(2, 1), padding=(1, 2),
                                dilation=(1, 2)),
    "stride2-dil2": Case(H=11, W=10, stride=(2, 2), dilation=(2, 2), padding=(2, 2)),
    "kernel1x1": Case(kernel=(1, 1), padding=(0, 0)),
    "kernel7x7": Case(H=8, W=9, kernel=(7, 7), padding=(3, 3), C=2, O=3),
    "kernel5x3": Case(H=8, W=6, kernel=(5, 3), padding=(2, 0)),
    "image1x1": Case(H=1, W=1, kernel=(3, 3), padding=(1, 1)),
    "output1x1": Case(H=3, W=3, kernel=(3, 3), padding=(0, 0)),
    "row-image": Case(H=1, W=9, kernel=(1, 3), padding=(0, 1)),
    "big-offsets": Case(offset_scale=8.0),
    "batch1-one-channel": Case(N=1, C=1, O=1),
}


@pytest.mark.parametrize("name", list(GRID))
def test_forward_and_gradients_match_reference(name):
    y, ry, names, got, want = run_both(deform_conv2d, GRID[name])
    assert y.shape == ry.shape and y.dtype == torch.float64
    assert_close_rel(y, ry, 1e-12, "output")
    for n, a, b in zip(names, got, want):
        assert a.shape == b.shape, n
        assert_close_rel(a, b, 1e-11, n)


def test_row_chunks_match_reference(monkeypatch):
    # A tiny column budget forces single rows per chunk: chunk boundaries must not matter.
    monkeypatch.setattr(torch_impl, "COLUMN_BUDGET_BYTES", 1)
    case = Case(N=3, H=7, W=5, C=4, offset_groups=2, groups=2, stride=(2, 1))
    y, ry, names, got, want = run_both(deform_conv2d, case)
    assert_close_rel(y, ry, 1e-12, "output")
    for n, a, b in zip(names, got, want):
        assert_close_rel(a, b, 1e-11, n)


def test_multi_image_chunks_match_reference(monkeypatch):
    # A budget of about two images per chunk, with a batch that does not divide evenly.
    case = Case(N=5, H=4, W=4, C=3, O=2)
    oH, oW = case.out_hw
    monkeypatch.setattr(torch_impl, "COLUMN_BUDGET_BYTES", 2 * oH * oW * 9 * 3 * 8)
    y, ry, names, got, want = run_both(deform_conv2d, case)
    assert_close_rel(y, ry, 1e-12, "output")
    for n, a, b in zip(names, got, want):
        assert_close_rel(a, b, 1e-11, n)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_random_configurations(data):
    groups = data.draw(st.sampled_from([1, 2, 3]))
    offset_groups = data.draw(st.sampled_from([1, 2, 3]))
    per = data.draw(st.integers(1, 2))
    C = groups * offset_groups * per
    kH, kW = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    sh, sw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    dh, dw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    ph, pw = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))
    min_h = max(1, dh * (kH - 1) + 1 - 2 * ph)
    min_w = max(1, dw * (kW - 1) + 1 - 2 * pw)
    H = data.draw(st.integers(min_h, min_h + 6))
    W = data.draw(st.integers(min_w, min_w + 6))
    case = Case(N=data.draw(st.integers(1, 2)), C=C, H=H, W=W, O=groups * data.draw(
        st.integers(1, 3)), kernel=(kH, kW), stride=(sh, sw), padding=(ph, pw),
        dilation=(dh, dw), groups=groups, offset_groups=offset_groups,
        mask=data.draw(st.booleans()), bias=data.draw(st.booleans()),
        offset_scale=data.draw(st.sampled_from([0.5, 2.0, 6.0])))
    y, ry, names, got, want = run_both(deform_conv2d, case, seed=data.draw(st.integers(0, 99)))
    scale = ry.abs().max().clamp_min(1e-12)
    assert ((y - ry).abs().max() / scale) < 1e-12
    for n, a, b in zip(names, got, want):
        s = b.abs().max().clamp_min(1e-12)
        assert ((a - b).abs().max() / s) < 1e-11, n


def test_gradcheck():
    case = Case(N=1, C=4, H=4, W=5, O=2, groups=2, offset_groups=2, stride=(1, 2),
                dilation=(2, 1), padding=(2, 1))
    x, off, w, b, m = case.tensors(requires_grad=True)

    def fn(x, off, w, b, m):
        return deform_conv2d(x, off, w, b, mask=m, **case.kwargs())

    # Random offsets are almost surely not integers, where the derivative is defined.
    assert torch.autograd.gradcheck(fn, (x, off, w, b, m), eps=1e-6, atol=1e-5)


def test_gradcheck_v1():
    case = Case(N=2, C=2, H=3, W=4, O=3, mask=False, bias=False)
    x, off, w, _, _ = case.tensors(requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, o, w: deform_conv2d(x, o, w, padding=1), (x, off, w), eps=1e-6, atol=1e-5)


def test_double_backward_raises_clearly():
    x, off, w, b, m = Case(N=1).tensors(requires_grad=True)
    y = deform_conv2d(x, off, w, b, padding=1, mask=m)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_zero_offsets_unit_mask_equal_conv2d():
    case = Case(N=2, C=6, O=4, groups=2, offset_groups=3, stride=(2, 1), dilation=(1, 2),
                padding=(1, 2), H=9, W=10)
    x, off, w, b, m = case.tensors()
    off.zero_()
    m.fill_(1)
    want = F.conv2d(x, w, b, **case.kwargs(), groups=2)
    for mask in (m, None):
        got = deform_conv2d(x, off, w, b, mask=mask, **case.kwargs())
        assert_close_rel(got, want, 1e-13, "output")


def test_integer_offsets_equal_conv_of_shifted_input():
    # The same integer shift (dy, dx) for every tap equals a plain convolution (no padding) of
    # the zero-padded image shifted by (dy, dx), zeros coming in from beyond its border.
    x, off, w, b, _ = Case(N=2, C=3, H=8, W=9, O=4).tensors()
    dy, dx = 2, -1
    off = off.view(2, 9, 2, 8, 9)
    off[:, :, 0], off[:, :, 1] = dy, dx
    got = deform_conv2d(x, off.view(2, 18, 8, 9), w, b, padding=1)
    xp = F.pad(x, (1, 1, 1, 1))  # (10, 11)
    shifted = torch.zeros_like(xp)
    shifted[:, :, :10 - dy, -dx:] = xp[:, :, dy:, :11 + dx]
    assert_close_rel(got, F.conv2d(shifted, w, b), 1e-13, "output")


def test_mask_scales_each_tap():
    x, off, w, b, m = Case(N=1, C=2, O=3).tensors()
    m.fill_(0.25)
    half = deform_conv2d(x, off, w, None, padding=1, mask=m)
    full = deform_conv2d(x, off, w, None, padding=1)
    assert_close_rel(half, 0.25 * full, 1e-13, "output")


def test_border_rule_matches_conventions():
    # One pixel image of value 1, 1x1 kernel: the output is the bilinear weight of that pixel.
    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    w = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    for (dy, dx), want in {(0.0, 0.0): 1.0, (-0.5, 0.0): 0.5, (0.25, 0.5): 0.375,
                           (-1.0, 0.0): 0.0, (1.0, 0.0): 0.0, (0.0, -0.999): 0.001,
                           (0.999, 0.0): 0.001}.items():
        off = torch.tensor([dy, dx], dtype=torch.float64).view(1, 2, 1, 1)
        got = deform_conv2d(x, off, w).item()
        assert got == pytest.approx(want, abs=1e-12), (dy, dx)


def test_offset_gradient_at_integer_positions_is_one_sided():
    # At zero offsets d sample/dy = I[y+1, x] - I[y, x]; the missing neighbour of the last row
    # counts as 0.
    x = torch.arange(12, dtype=torch.float64).view(1, 1, 3, 4) ** 2
    w = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    off = torch.zeros(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    deform_conv2d(x, off, w).sum().backward()
    img = x[0, 0]
    want_dy = torch.cat([img[1:] - img[:-1], -img[-1:]], 0)
    want_dx = torch.cat([img[:, 1:] - img[:, :-1], -img[:, -1:]], 1)
    assert torch.equal(off.grad[0, 0], want_dy)
    assert torch.equal(off.grad[0, 1], want_dx)


def test_offset_gradient_on_the_padding_border_is_one_sided():
    # Zero offsets with padding 1 put the first row's and column's taps at exactly -1, where the
    # sample is 0 but torchvision's floor-based derivative is the neighbour inside: I[0, x] - 0.
    x = (torch.arange(12, dtype=torch.float64).view(1, 1, 3, 4) + 1) ** 2
    w = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    off = torch.zeros(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    y = deform_conv2d(x, off, w, padding=1)
    assert y[0, 0, 0].abs().max() == 0 and y[0, 0, :, 0].abs().max() == 0
    y.sum().backward()
    img = x[0, 0]
    # Top row (y = -1): d/dy = I[0, x] inside the columns, 0 at x = -1 and x = W.
    assert torch.equal(off.grad[0, 0, 0], torch.cat([img.new_zeros(1), img[0], img.new_zeros(1)]))
    # Left column (x = -1): d/dx = I[y, 0] inside the rows, 0 at y = -1 and y = H.
    assert torch.equal(off.grad[0, 1, :, 0], torch.cat([img.new_zeros(1), img[:, 0],
                                                        img.new_zeros(1)]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e30, -1e30])
def test_hostile_offsets_contribute_zero(bad):
    case = Case(N=2, C=4, offset_groups=2)
    x, off, w, b, m = case.tensors()
    hostile = off.clone()
    # Poison tap 4 of group 0 at some positions, in dy or dx.
    hostile[0, 2 * 4, 1:3, 2:5] = bad
    hostile[1, 2 * 4 + 1, 0, :] = bad
    # Expected: the same positions with a zero mask contribute nothing.
    m0 = m.clone()
    m0[0, 4, 1:3, 2:5] = 0
    m0[1, 4, 0, :] = 0
    want = deform_conv2d(x, off, w, b, padding=1, mask=m0)
    ins = [t.clone().requires_grad_() for t in (x, hostile, w, b, m)]
    got = deform_conv2d(ins[0], ins[1], ins[2], ins[3], padding=1, mask=ins[4])
    assert torch.isfinite(got).all()
    assert_close_rel(got, want, 1e-13, "output")
    got.sum().backward()
    for t in ins:
        assert torch.isfinite(t.grad).all()
    assert (ins[1].grad[0, 2 * 4, 1:3, 2:5] == 0).all()
    assert (ins[4].grad[0, 4, 1:3, 2:5] == 0).all()


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float16, 2e-3),
                                        (torch.bfloat16, 2e-2)])
def test_lower_precision(dtype, rtol):
    case = Case(C=4, groups=2, offset_groups=2)
    y, ry, names, got, want = run_both(deform_conv2d, case, dtype=dtype)
    assert y.dtype == dtype
    assert_close_rel(y, ry, rtol, "output")
    for n, a, b in zip(names, got, want):
        assert a.dtype == dtype, n
        # Offset gradients multiply input differences by weights: a little looser.
        assert_close_rel(a, b, 4 * rtol, n)


def test_non_contiguous_inputs():
    case = Case(N=2, C=4, H=6, W=6, O=4, offset_groups=2)
    x, off, w, b, m = case.tensors()
    oH, oW = case.out_hw
    # Transposed spatial dims, channels-last, strided channel slices.
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    xcl = x.contiguous(memory_format=torch.channels_last)
    offs = torch.cat([off, off], 1)[:, ::2]
    offs[:] = off
    wt = w.transpose(2, 3).contiguous().transpose(2, 3)
    mt = m.transpose(2, 3).contiguous().transpose(2, 3)
    bs = torch.stack([b, b], 1)[:, 0]
    assert not (xt.is_contiguous() or offs.is_contiguous() or wt.is_contiguous()
                or mt.is_contiguous() or bs.is_contiguous())
    want = deform_conv2d_ref(x, off, w, b, padding=1, mask=m)
    for xi in (xt, xcl):
        got = deform_conv2d(xi, offs, wt, bs, padding=1, mask=mt)
        assert_close_rel(got, want, 1e-12, "output")


def test_batch_of_zero():
    x = torch.randn(0, 4, 5, 5, requires_grad=True)
    off = torch.randn(0, 18, 5, 5, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    m = torch.rand(0, 9, 5, 5, requires_grad=True)
    y = deform_conv2d(x, off, w, b, padding=1, mask=m)
    assert y.shape == (0, 3, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape and off.grad.shape == off.shape
    assert m.grad.shape == m.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_only_some_inputs_require_grad():
    case = Case(N=1, C=2, O=2)
    x, off, w, b, m = case.tensors()
    w.requires_grad_()
    off.requires_grad_()
    y = deform_conv2d(x, off, w, b, padding=1, mask=m)
    gw, goff = torch.autograd.grad(y.sum(), (w, off))
    rw, roff = w.detach().requires_grad_(), off.detach().requires_grad_()
    ry = deform_conv2d_ref(x, roff, rw, b, padding=1, mask=m)
    ew, eoff = torch.autograd.grad(ry.sum(), (rw, roff))
    assert_close_rel(gw, ew, 1e-12, "weight")
    assert_close_rel(goff, eoff, 1e-12, "offset")


def test_bitwise_repeatable():
    case = Case(N=2, C=4, offset_groups=2)
    first = run_both(deform_conv2d, case)
    again = run_both(deform_conv2d, case)
    assert torch.equal(first[0], again[0])
    for a, b in zip(first[3], again[3]):
        assert torch.equal(a, b)


def test_docstring_example_runs():
    result = doctest.testmod(deformconv.ops.deform_conv, verbose=False)
    assert result.attempted > 0 and result.failed == 0
