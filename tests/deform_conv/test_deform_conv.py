"""deform_conv2d against the float64 oracle: forward, every gradient, the conventions' rules."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deformconv.ops.deform_conv.functional
from deformconv import deform_conv2d
from deformconv.ops.deform_conv import torch_kernels as torch_impl
from deformconv.ops.deform_conv.reference import deform_conv_ref
from deformconv.testing import CASES, Problem, assert_close, compare_with_oracle


@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_match_reference(name, device):
    compare_with_oracle(deform_conv2d, CASES[name], device=device)


def test_row_chunks_match_reference(monkeypatch):
    # A tiny column budget forces single rows per chunk: chunk boundaries must not matter.
    monkeypatch.setattr(torch_impl, "COLUMN_BUDGET_BYTES", 1)
    p = Problem(N=3, size=(7, 5), C=4, offset_groups=2, groups=2, stride=(2, 1))
    compare_with_oracle(deform_conv2d, p)


def test_multi_image_chunks_match_reference(monkeypatch):
    # A budget of about two images per chunk, with a batch that does not divide evenly.
    p = Problem(N=5, size=(4, 4), C=3, O=2)
    oH, oW = p.out
    monkeypatch.setattr(torch_impl, "COLUMN_BUDGET_BYTES", 2 * oH * oW * 9 * 3 * 8)
    compare_with_oracle(deform_conv2d, p)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_random_configurations(data, device):
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
    p = Problem(N=data.draw(st.integers(1, 2)), C=C, size=(H, W),
                O=groups * data.draw(st.integers(1, 3)), kernel=(kH, kW), stride=(sh, sw),
                padding=(ph, pw), dilation=(dh, dw), groups=groups, offset_groups=offset_groups,
                mask=data.draw(st.booleans()), bias=data.draw(st.booleans()),
                offset_scale=data.draw(st.sampled_from([0.5, 2.0, 6.0])))
    compare_with_oracle(deform_conv2d, p, device=device, seed=data.draw(st.integers(0, 99)))


def _tensors(p: Problem, **kwargs):
    t = p.tensors(**kwargs)
    return t["input"], t["offset"], t["weight"], t["bias"], t["mask"]


def test_gradcheck():
    p = Problem(N=1, C=4, size=(4, 5), O=2, groups=2, offset_groups=2, stride=(1, 2),
                dilation=(2, 1), padding=(2, 1))
    x, off, w, b, m = _tensors(p, requires_grad=True)

    def fn(x, off, w, b, m):
        return deform_conv2d(x, off, w, b, mask=m, **p.kwargs())

    # Random offsets are almost surely not integers, where the derivative is defined.
    assert torch.autograd.gradcheck(fn, (x, off, w, b, m), eps=1e-6, atol=1e-5)


def test_gradcheck_v1():
    p = Problem(N=2, C=2, size=(3, 4), O=3, mask=False, bias=False)
    x, off, w, _, _ = _tensors(p, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, o, w: deform_conv2d(x, o, w, padding=1), (x, off, w), eps=1e-6, atol=1e-5)


def test_double_backward_raises_clearly():
    x, off, w, b, m = _tensors(Problem(N=1), requires_grad=True)
    y = deform_conv2d(x, off, w, b, padding=1, mask=m)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_zero_offsets_unit_mask_equal_conv2d(device):
    p = Problem(N=2, C=6, O=4, groups=2, offset_groups=3, stride=(2, 1), dilation=(1, 2),
                padding=(1, 2), size=(9, 10))
    x, off, w, b, m = _tensors(p, device=device)
    off.zero_()
    m.fill_(1)
    want = F.conv2d(x, w, b, **p.kwargs(), groups=2)
    for mask in (m, None):
        got = deform_conv2d(x, off, w, b, mask=mask, **p.kwargs())
        assert_close(got, want, name="output")


def test_integer_offsets_equal_conv_of_shifted_input():
    # The same integer shift (dy, dx) for every tap equals a plain convolution (no padding) of
    # the zero-padded image shifted by (dy, dx), zeros coming in from beyond its border.
    x, off, w, b, _ = _tensors(Problem(N=2, C=3, size=(8, 9), O=4))
    dy, dx = 2, -1
    off = off.view(2, 9, 2, 8, 9)
    off[:, :, 0], off[:, :, 1] = dy, dx
    got = deform_conv2d(x, off.view(2, 18, 8, 9), w, b, padding=1)
    xp = F.pad(x, (1, 1, 1, 1))  # (10, 11)
    shifted = torch.zeros_like(xp)
    shifted[:, :, :10 - dy, -dx:] = xp[:, :, dy:, :11 + dx]
    assert_close(got, F.conv2d(shifted, w, b), name="output")


def test_mask_scales_each_tap():
    x, off, w, b, m = _tensors(Problem(N=1, C=2, O=3))
    m.fill_(0.25)
    half = deform_conv2d(x, off, w, None, padding=1, mask=m)
    full = deform_conv2d(x, off, w, None, padding=1)
    assert_close(half, 0.25 * full, name="output")


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
def test_hostile_offsets_contribute_zero(bad, device):
    x, off, w, b, m = _tensors(Problem(N=2, C=4, offset_groups=2), device=device)
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
    assert_close(got, want, name="output")
    got.sum().backward()
    for t in ins:
        assert torch.isfinite(t.grad).all()
    assert (ins[1].grad[0, 2 * 4, 1:3, 2:5] == 0).all()
    assert (ins[4].grad[0, 4, 1:3, 2:5] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_lower_precision(dtype, device):
    # Output and every gradient of the input's dtype, within deformconv.testing.TOLERANCE.
    compare_with_oracle(deform_conv2d, Problem(C=4, groups=2, offset_groups=2), dtype, device)


def test_non_contiguous_inputs(device):
    p = Problem(N=2, C=4, size=(6, 6), O=4, offset_groups=2)
    x, off, w, b, m = _tensors(p, device=device)
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
    want = deform_conv_ref(x, off, w, b, padding=1, mask=m)
    for xi in (xt, xcl):
        got = deform_conv2d(xi, offs, wt, bs, padding=1, mask=mt)
        assert_close(got, want, name="output")


def test_batch_of_zero(device):
    x, off, w, b, m = _tensors(Problem(N=0, C=4, O=3, size=(5, 5)), device=device,
                               dtype=torch.float32, requires_grad=True)
    y = deform_conv2d(x, off, w, b, padding=1, mask=m)
    assert y.shape == (0, 3, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape and off.grad.shape == off.shape
    assert m.grad.shape == m.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_only_some_inputs_require_grad():
    x, off, w, b, m = _tensors(Problem(N=1, C=2, O=2))
    w.requires_grad_()
    off.requires_grad_()
    y = deform_conv2d(x, off, w, b, padding=1, mask=m)
    gw, goff = torch.autograd.grad(y.sum(), (w, off))
    rw, roff = w.detach().requires_grad_(), off.detach().requires_grad_()
    ry = deform_conv_ref(x, roff, rw, b, padding=1, mask=m)
    ew, eoff = torch.autograd.grad(ry.sum(), (rw, roff))
    assert_close(gw, ew, name="weight")
    assert_close(goff, eoff, name="offset")


def test_docstring_example_runs():
    result = doctest.testmod(deformconv.ops.deform_conv.functional, verbose=False)
    assert result.attempted > 0 and result.failed == 0
