"""deform_conv1d/2d/3d against the float64 oracle: forward, every gradient, the conventions'
rules. One test per behaviour, parametrised over the dimensionality ``R`` and over every device
the suite runs on (the ``device`` fixture: CPU, and CUDA when there is a GPU)."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deformconv.ops.deform_conv.functional
from deformconv import deform_conv1d, deform_conv2d, deform_conv3d
from deformconv.ops.deform_conv import library
from deformconv.ops.deform_conv import torch_kernels as torch_impl
from deformconv.ops.deform_conv.reference import deform_conv_ref, sample
from deformconv.testing import CASES, Problem, assert_close, compare_with_oracle

R_ALL = [1, 2, 3]
DIMS = ["1d", "2d", "3d"]  # test ids name the dimensionality (scripts/planted_bugs.py counts them)
FUNCS = {1: deform_conv1d, 2: deform_conv2d, 3: deform_conv3d}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
P1 = Problem(N=2, C=4, O=6, size=(9,), kernel=(3,))
P2 = Problem(N=2, C=4, O=6, size=(6, 7), kernel=(3, 3))
P3 = Problem(N=2, C=4, O=4, size=(4, 5, 4), kernel=(3, 3, 2), padding=(1, 1, 0))
P = {1: P1, 2: P2, 3: P3}

# The oracle grid: the awkward 2-D shapes of deformconv.testing.CASES, and their 1-D and 3-D
# counterparts (groups and offset groups above 1, asymmetric stride/padding/dilation, size 1,
# no mask or bias, big offsets).
GRID = {
    **{f"2d-{k}": v for k, v in CASES.items()},
    "1d": P1,
    "1d-v1-nobias": P1.with_(mask=False, bias=False),
    "1d-groups2-og3": P1.with_(C=6, O=4, groups=2, offset_groups=3),
    "1d-depthwise": P1.with_(C=4, O=8, groups=4, offset_groups=4),
    "1d-stride2-dil2": P1.with_(size=(13,), stride=2, dilation=2, padding=2),
    "1d-k1": P1.with_(kernel=(1,), padding=0),
    "1d-k5-big-offsets": P1.with_(kernel=(5,), padding=2, offset_scale=8.0),
    "1d-size1": P1.with_(size=(1,), padding=1),
    "3d": P3,
    "3d-v1-nobias": P3.with_(mask=False, bias=False),
    "3d-groups2-og2": P3.with_(C=4, O=6, groups=2, offset_groups=2),
    "3d-asym": P3.with_(size=(5, 6, 5), kernel=(2, 3, 2), stride=(2, 1, 2), padding=(0, 1, 1),
                        dilation=(2, 1, 1)),
    "3d-depth1": P3.with_(size=(1, 4, 5), kernel=(1, 3, 3), padding=(0, 1, 1)),
    "3d-size1": P3.with_(size=(1, 1, 1), kernel=(3, 3, 3), padding=1, N=1),
    "3d-big-offsets": P3.with_(offset_scale=6.0),
}


def _present(t):
    return [k for k, v in t.items() if v is not None]


def _call(R, t, prob, **change):
    """FUNCS[R] on the tensors ``t`` (keyword arguments), with ``change`` replacing some."""
    return FUNCS[R](**{**t, **change}, **prob.kwargs())


@pytest.fixture(params=["tap-volume", "gemm"])
def columns_product(request, monkeypatch):
    """Both ways the pure-PyTorch kernel multiplies its columns with the weight: the tap-volume
    convolution (forced for every chunk) and the plain GEMM (forced wherever there is one conv
    group; the rest still take the tap-volume convolution)."""
    gemm = request.param == "gemm"
    monkeypatch.setattr(torch_impl, "_gemm_chunk", lambda groups, *_: gemm and groups == 1)
    return request.param


@pytest.mark.parametrize("name", list(GRID))
def test_forward_and_gradients_match_oracle(name, device, columns_product):
    prob = GRID[name]
    compare_with_oracle(FUNCS[prob.ndim], prob, device=device)


CHUNKED = {1: P1.with_(N=3, size=(11,), stride=2, offset_groups=2),
           2: P2.with_(N=3, size=(7, 5), groups=2, offset_groups=2, stride=(2, 1)),
           3: P3.with_(N=3, size=(5, 4, 4), stride=(1, 2, 1), offset_groups=2)}


@pytest.mark.parametrize("chunks", ["slabs", "two-samples", "whole-batch"])
@pytest.mark.parametrize("R", R_ALL, ids=DIMS)
def test_chunking_does_not_matter(monkeypatch, R, chunks, columns_product):
    # The pure-PyTorch kernel's column budget: 1 byte gives one slab of the first output
    # dimension per chunk; two samples' columns give whole samples, two per chunk, over a batch
    # they do not divide; 1 << 30 gives the whole batch in one chunk.
    prob = CHUNKED[R].with_(N=5) if chunks == "two-samples" else CHUNKED[R]
    per_sample = math.prod(prob.out) * prob.taps * prob.C * 8  # float64 columns
    budget = {"slabs": 1, "two-samples": 2 * per_sample, "whole-batch": 1 << 30}[chunks]
    monkeypatch.setattr(torch_impl, "COLUMN_BUDGET_BYTES", budget)
    seen = []
    real = torch_impl._chunks
    monkeypatch.setattr(torch_impl, "_chunks", lambda *a: seen.append(list(real(*a))) or seen[-1])
    compare_with_oracle(FUNCS[R], prob)
    n_chunks = {"slabs": prob.N * prob.out[0], "two-samples": 3, "whole-batch": 1}[chunks]
    assert seen and all(len(c) == n_chunks for c in seen), (chunks, [len(c) for c in seen])


GRADCHECK = {
    "1d": P1.with_(N=1, C=2, O=2, size=(6,)),
    "1d-v1": P1.with_(N=2, C=2, O=3, size=(5,), mask=False, bias=False),
    "2d": Problem(N=1, C=4, size=(4, 5), O=2, groups=2, offset_groups=2, stride=(1, 2),
                  dilation=(2, 1), padding=(2, 1)),
    "2d-v1": Problem(N=2, C=2, size=(3, 4), O=3, mask=False, bias=False),
    "3d": P3.with_(N=1, C=2, O=2, size=(2, 2, 3), kernel=(2, 1, 2), padding=(0, 0, 1),
                   stride=(1, 1, 2)),
    "3d-v1": P3.with_(N=2, C=1, O=2, size=(2, 2, 2), kernel=(2, 1, 2), padding=(0, 1, 1),
                      mask=False, bias=False),
}


@pytest.mark.parametrize("name", list(GRADCHECK))
def test_gradcheck(name, columns_product):
    # Random offsets are almost surely not integers, where the derivative is defined.
    prob = GRADCHECK[name]
    t = prob.tensors(requires_grad=True)
    names = _present(t)

    def f(*args):
        return FUNCS[prob.ndim](**dict(zip(names, args)), **prob.kwargs())

    assert torch.autograd.gradcheck(f, [t[k] for k in names], eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("R", R_ALL, ids=DIMS)
def test_double_backward_is_a_clear_error(R):
    t = P[R].tensors(requires_grad=True)
    y = _call(R, t, P[R])
    (g,) = torch.autograd.grad(y.sum(), t["offset"], create_graph=True)
    with pytest.raises(RuntimeError, match=f"deform_conv{R}d supports first-order gradients "
                                           "only: double backward"):
        g.sum().backward()


ZERO = {1: P1.with_(C=6, O=4, groups=2, offset_groups=3, size=(12,), stride=2, dilation=2),
        2: Problem(N=2, C=6, O=4, groups=2, offset_groups=3, stride=(2, 1), dilation=(1, 2),
                   padding=(1, 2), size=(9, 10)),
        3: P3.with_(C=4, O=6, groups=2, stride=(1, 2, 1), dilation=(2, 1, 1), size=(6, 5, 5),
                    padding=(2, 1, 0))}


@pytest.mark.parametrize("R", R_ALL, ids=DIMS)
def test_zero_offsets_equal_conv(R, device):
    prob = ZERO[R]
    t = prob.tensors(device=device)
    off = torch.zeros_like(t["offset"])
    want = CONV[R](t["input"], t["weight"], t["bias"], groups=prob.groups, **prob.kwargs())
    v1 = _call(R, t, prob, offset=off, mask=None)
    ones = _call(R, t, prob, offset=off, mask=torch.ones_like(t["mask"]))
    assert_close(v1, want, name="v1")
    assert_close(ones, want, name="mask of ones")
    if device == "cpu":
        assert torch.equal(ones, v1)  # a mask of ones is v1


@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("shift", [(2,), (-1,), (2, -1), (-1, 3), (1, -1, 2), (0, 2, -1)],
                         ids=lambda s: f"{len(s)}d-shift{','.join(map(str, s))}")
def test_integer_offsets_equal_conv_of_shifted_input(shift, padding, device):
    # The same integer shift for every tap equals a plain convolution (no padding) of the
    # zero-padded input shifted by it, zeros coming in from beyond its border.
    R = len(shift)
    prob = {1: P1.with_(size=(10,)), 2: P2.with_(C=3, O=4, size=(8, 9)),
            3: P3.with_(size=(5, 6, 5))}[R].with_(padding=padding)
    t = prob.tensors(device=device)
    off = torch.zeros_like(t["offset"]).unflatten(1, (-1, R))
    off[:] = torch.tensor(shift, dtype=off.dtype).view(1, 1, R, *[1] * R)
    y = _call(R, t, prob, offset=off.flatten(1, 2), mask=None)
    xp = F.pad(t["input"], [padding] * 2 * R)
    shifted = torch.zeros_like(xp)
    dst, src = [slice(None)] * 2, [slice(None)] * 2
    for s, n in zip(shift, xp.shape[2:]):
        dst.append(slice(max(0, -s), n - max(0, s)))
        src.append(slice(max(0, s), n - max(0, -s)))
    shifted[tuple(dst)] = xp[tuple(src)]
    want = CONV[R](shifted, t["weight"], t["bias"], stride=prob.strides,
                   dilation=prob.dilations)
    assert_close(y, want, name="output")


@pytest.mark.parametrize("R", R_ALL, ids=DIMS)
def test_mask_scales_each_tap(R, device):
    t = P[R].tensors(device=device)
    half = _call(R, t, P[R], bias=None, mask=torch.full_like(t["mask"], 0.25))
    full = _call(R, t, P[R], bias=None, mask=None)
    assert_close(half, 0.25 * full, name="output")


def test_border_rule_matches_conventions_2d():
    # One pixel image of value 1, 1x1 kernel: the output is the bilinear weight of that pixel.
    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    w = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    for (dy, dx), want in {(0.0, 0.0): 1.0, (-0.5, 0.0): 0.5, (0.25, 0.5): 0.375,
                           (-1.0, 0.0): 0.0, (1.0, 0.0): 0.0, (0.0, -0.999): 0.001,
                           (0.999, 0.0): 0.001}.items():
        off = torch.tensor([dy, dx], dtype=torch.float64).view(1, 2, 1, 1)
        got = deform_conv2d(x, off, w).item()
        assert got == pytest.approx(want, abs=1e-12), (dy, dx)


SIZES = {1: (5,), 2: (3, 4), 3: (2, 3, 4)}


@pytest.mark.parametrize("R", R_ALL, ids=DIMS)
def test_offset_gradient_at_integer_positions_is_one_sided(R, device):
    # At zero offsets d sample/dp_d = I[p + e_d] - I[p]; the missing neighbour beyond the last
    # index counts as 0.
    size = SIZES[R]
    x = (torch.arange(math.prod(size), dtype=torch.float64).view(1, 1, *size) ** 2).to(device)
    w = torch.ones(1, 1, *[1] * R, dtype=torch.float64, device=device)
    off = torch.zeros(1, R, *size, dtype=torch.float64, device=device, requires_grad=True)
    FUNCS[R](x, off, w).sum().backward()
    img = x[0, 0]
    for d, n in enumerate(size):
        want = torch.cat([img.narrow(d, 1, n - 1) - img.narrow(d, 0, n - 1),
                          -img.narrow(d, n - 1, 1)], d)
        assert torch.equal(off.grad[0, d], want), d


@pytest.mark.parametrize("R", R_ALL, ids=DIMS)
def test_offset_gradient_on_the_padding_border_is_one_sided(R, device):
    # Zero offsets with padding 1 put the first taps along each dimension d at exactly -1,
    # where the sample is 0 but the floor-based derivative is the neighbour inside: along d,
    # d sample/dp_d = I[0 along d] at the other coordinates when they are inside, 0 on their
    # padding border.
    size = SIZES[R]
    x = ((torch.arange(math.prod(size), dtype=torch.float64) + 1) ** 2).view(1, 1, *size)
    x = x.to(device)
    w = torch.ones(1, 1, *[1] * R, dtype=torch.float64, device=device)
    off = torch.zeros(1, R, *[s + 2 for s in size], dtype=torch.float64, device=device,
                      requires_grad=True)
    y = FUNCS[R](x, off, w, padding=1)
    for d in range(R):
        assert y[0, 0].select(d, 0).abs().max() == 0
    y.sum().backward()
    img = x[0, 0]
    for d in range(R):
        want = F.pad(img.select(d, 0), [1, 1] * (R - 1)) if R > 1 else img[0]
        assert torch.equal(off.grad[0, d].select(d, 0), want), d


# The conventions' 1-D example: input [1, 2, 3, 4, 5], kernel 1, weight 1.
SAMPLES = {-1.0: 0.0, -0.25: 0.75, 0.5: 1.5, 4.0: 5.0, 4.25: 3.75, 5.0: 0.0}
SLOPES = {-1.5: 0.0, -1.0: 1.0, -0.25: 1.0, 0.0: 1.0, 0.5: 1.0, 3.0: 1.0, 4.0: -5.0,
          4.25: -5.0, 5.0: 0.0}


def _pinned_1d(positions, mask_value=1.0):
    """Per batch item n: sample of [1..5] at positions[n] (output 0), and its gradients."""
    N = len(positions)
    x = torch.arange(1.0, 6.0, dtype=torch.float64).repeat(N, 1, 1).requires_grad_()
    off = torch.zeros(N, 1, 5, dtype=torch.float64)
    off[:, 0, 0] = torch.tensor(positions, dtype=torch.float64)
    off.requires_grad_()
    m = torch.full((N, 1, 5), mask_value, dtype=torch.float64, requires_grad=True)
    w = torch.ones(1, 1, 1, dtype=torch.float64)
    y = deform_conv1d(x, off, w, mask=m)
    go = torch.zeros_like(y)
    go[:, 0, 0] = 1
    gx, goff, gm = torch.autograd.grad(y, (x, off, m), go)
    return y[:, 0, 0], gx[:, 0], goff[:, 0, 0], gm[:, 0, 0]


def test_pinned_border_values_1d():
    y, _, _, gm = _pinned_1d(list(SAMPLES), mask_value=0.5)
    want = torch.tensor(list(SAMPLES.values()), dtype=torch.float64)
    assert torch.equal(y, 0.5 * want)
    assert torch.equal(gm, want)  # d/dmask: the unmasked sample


def test_pinned_one_sided_derivative_1d():
    _, _, goff, _ = _pinned_1d(list(SLOPES), mask_value=0.5)
    assert torch.equal(goff, 0.5 * torch.tensor(list(SLOPES.values()), dtype=torch.float64))


def test_pinned_input_gradient_1d():
    _, gx, _, _ = _pinned_1d([0.25, -0.25, 4.5, -1.0], mask_value=0.5)
    want = torch.zeros(4, 5, dtype=torch.float64)
    want[0, 0], want[0, 1] = 0.375, 0.125
    want[1, 0] = 0.375  # the lower corner -1 is dropped
    want[2, 4] = 0.25  # the upper corner 5 is dropped
    assert torch.equal(gx, want)  # at exactly -1 nothing is scattered


def test_pinned_depth_derivative_at_minus_one_3d():
    # At exactly p_z = -1: d/dz is the 2-D sample of slice I[0] at (p_y, p_x); d/dy = d/dx = 0.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 3, 4, 5, generator=g, dtype=torch.float64)
    p = (-1.0, 1.25, 2.5)
    off = torch.zeros(1, 3, 3, 4, 5, dtype=torch.float64)
    off[0, :, 0, 0, 0] = torch.tensor(p, dtype=torch.float64)
    off.requires_grad_()
    y = deform_conv3d(x, off, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64))
    go = torch.zeros_like(y)
    go[0, 0, 0, 0, 0] = 1
    (goff,) = torch.autograd.grad(y, off, go)
    assert y[0, 0, 0, 0, 0].item() == 0.0
    want = sample(x[:, :, 0], [torch.full((1, 1, 1), p[1], dtype=torch.float64),
                               torch.full((1, 1, 1), p[2], dtype=torch.float64)]).item()
    assert want != 0
    assert goff[0, 0, 0, 0, 0].item() == pytest.approx(want, rel=1e-15)
    assert goff[0, 1, 0, 0, 0].item() == 0.0 and goff[0, 2, 0, 0, 0].item() == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e30, -1e30])
@pytest.mark.parametrize("R", R_ALL, ids=DIMS)
def test_hostile_offsets_contribute_nothing(R, bad, device):
    prob = P[R].with_(offset_groups=2)
    t = prob.tensors(device=device)
    off = t["offset"].clone().unflatten(1, (-1, R))  # (N, G*K, R, *o)
    hit = torch.zeros(off.shape[:2] + off.shape[3:], dtype=torch.bool, device=device)
    flat = hit.view(-1)
    picks = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:10]
    for i, j in enumerate(picks.tolist()):  # one component of each picked (sample, tap, place)
        flat[j] = True
        pos = list(torch.unravel_index(torch.tensor(j), hit.shape))
        off[(pos[0], pos[1], i % R, *pos[2:])] = bad
    off = off.flatten(1, 2)
    leaves = {k: v.requires_grad_() for k, v in dict(t, offset=off).items() if v is not None}
    y = _call(R, leaves, prob)
    grads = dict(zip(leaves, torch.autograd.grad(y, list(leaves.values()),
                                                 prob.grad_out(device=device))))
    # Expected: the same call with those taps masked out (their offsets set to 0).
    clean_off = off.detach().unflatten(1, (-1, R)).masked_fill(hit.unsqueeze(2), 0.0)
    want = _call(R, t, prob, offset=clean_off.flatten(1, 2),
                 mask=t["mask"].masked_fill(hit, 0.0))
    assert torch.isfinite(y).all()
    assert_close(y, want, name="output")
    for name in ("input", "weight", "bias", "offset", "mask"):
        assert torch.isfinite(grads[name]).all(), name
    g_off = grads["offset"].unflatten(1, (-1, R))
    assert (g_off.permute(0, 1, *range(3, 3 + R), 2)[hit] == 0).all()
    assert (grads["mask"][hit] == 0).all()
    assert (grads["mask"][~hit] != 0).any()


LOW = {1: P1.with_(offset_scale=1.5), 2: P2.with_(groups=2, offset_groups=2),
       3: P3.with_(offset_scale=1.5)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("R", R_ALL, ids=DIMS)
def test_lower_precision(R, dtype, device):
    # Output and every gradient of the input's dtype, within deformconv.testing.TOLERANCE.
    compare_with_oracle(FUNCS[R], LOW[R], dtype, device)


@pytest.mark.parametrize("R", R_ALL, ids=DIMS)
def test_non_contiguous_inputs(R, device):
    prob = P[R].with_(offset_groups=2)
    t = prob.tensors(device=device)
    # The same values through transposed/strided storage, and channels-last input.
    nc = {k: (v.transpose(0, -1).contiguous().transpose(0, -1) if v.dim() > 1 else
              torch.stack([v, v], 1)[:, 0]) for k, v in t.items()}
    assert not any(v.is_contiguous() for v in nc.values())
    leaves = {k: v.requires_grad_() for k, v in nc.items()}
    y = _call(R, leaves, prob)
    go = prob.grad_out(device=device)
    grads = torch.autograd.grad(y, list(leaves.values()), go)
    ct = {k: v.clone().requires_grad_() for k, v in t.items()}
    ry = _call(R, ct, prob)
    rgrads = torch.autograd.grad(ry, list(ct.values()), go)
    assert_close(y, ry, name="output")
    for k, a, b in zip(ct, grads, rgrads):
        assert_close(a, b, name=k)
    if R > 1:
        fmt = torch.channels_last if R == 2 else torch.channels_last_3d
        assert_close(_call(R, t, prob, input=t["input"].contiguous(memory_format=fmt)), ry,
                     name="channels-last output")


@pytest.mark.parametrize("R", R_ALL, ids=DIMS)
def test_batch_of_zero(R, device):
    prob = P[R].with_(N=0)
    t = prob.tensors(torch.float32, device=device, requires_grad=True)
    y = _call(R, t, prob)
    assert y.shape == (0, prob.O, *prob.out)
    y.sum().backward()
    for k in _present(t):
        assert t[k].grad.shape == t[k].shape, k
    assert torch.equal(t["weight"].grad, torch.zeros_like(t["weight"]))
    assert torch.equal(t["bias"].grad, torch.zeros_like(t["bias"]))


@pytest.mark.parametrize("R", R_ALL, ids=DIMS)
def test_only_some_inputs_require_grad(R, device):
    t = P[R].with_(N=1, C=2, O=2).tensors(device=device)
    w, off = t["weight"].requires_grad_(), t["offset"].requires_grad_()
    y = _call(R, t, P[R])
    gw, goff = torch.autograd.grad(y.sum(), (w, off))
    c = {k: v.detach().cpu() for k, v in t.items()}
    rw, roff = c["weight"].requires_grad_(), c["offset"].requires_grad_()
    ry = deform_conv_ref(**c, **P[R].kwargs())
    ew, eoff = torch.autograd.grad(ry.sum(), (rw, roff))
    assert_close(gw, ew, name="weight")
    assert_close(goff, eoff, name="offset")


def _random_problem(R, data):
    """Any valid configuration: groups and offset groups up to 3 (2 in 3-D), kernel, stride,
    dilation and padding per dimension, sizes down to the smallest valid one."""
    ints = st.integers
    big = R < 3
    groups, og = data.draw(ints(1, 3 if big else 2)), data.draw(ints(1, 3 if big else 2))
    kernel = tuple(data.draw(ints(1, 4 if big else 3)) for _ in range(R))
    stride = tuple(data.draw(ints(1, 3 if big else 2)) for _ in range(R))
    dil = tuple(data.draw(ints(1, 3 if big else 2)) for _ in range(R))
    pad = tuple(data.draw(ints(0, 3 if big else 2)) for _ in range(R))
    size = tuple(max(1, d * (k - 1) + 1 - 2 * p) + data.draw(ints(0, 6 if big else 2))
                 for d, k, p in zip(dil, kernel, pad))
    return Problem(N=data.draw(ints(1, 2)), C=groups * og * data.draw(ints(1, 2)), size=size,
                   O=groups * data.draw(ints(1, 3)), kernel=kernel, stride=stride, padding=pad,
                   dilation=dil, groups=groups, offset_groups=og,
                   mask=data.draw(st.booleans()), bias=data.draw(st.booleans()),
                   offset_scale=data.draw(st.sampled_from([0.5, 2.0, 6.0])))


@pytest.mark.parametrize("R", R_ALL, ids=DIMS)
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_random_configurations(R, device, data):
    # Random shapes can put every sample outside (size 1, large offsets, no bias): then the
    # result must be exactly zero (compare_with_oracle's rule for a zero expectation).
    compare_with_oracle(FUNCS[R], _random_problem(R, data), device=device,
                        seed=data.draw(st.integers(0, 999)))


OPCHECK = {1: P1.with_(offset_groups=2, size=(5,)),
           2: P2.with_(N=1, size=(4, 5), groups=2, O=2, stride=(1, 2), bias=False),
           3: P3.with_(mask=False, groups=2, O=2, size=(2, 3, 2), kernel=(2, 2, 1))}


@pytest.mark.parametrize("R", R_ALL, ids=DIMS)
def test_opcheck(R):
    prob = OPCHECK[R]
    t = prob.tensors(requires_grad=True)
    params = [list(prob.strides), list(prob.paddings), list(prob.dilations)]
    if R == 2:  # the 2-D schema takes six ints: stride_h, stride_w, pad_h, ..., dil_w
        params = [v for p in params for v in p]
    args = (t["input"], t["weight"], t["offset"], t["mask"], t["bias"], *params)
    torch.library.opcheck(library.OPS[R], args)
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    for output_mask in ([True, True, True, True], [False, True, False, True]):
        torch.library.opcheck(library.BACKWARD_OPS[R], (prob.grad_out(), *plain, output_mask))


@pytest.mark.slow
def test_compile_fullgraph_forward_backward():
    # One compiled graph with the three ops: one inductor warm-up for all.
    torch._dynamo.reset()
    probs = (P1.with_(offset_groups=2), P2.with_(offset_groups=2), P3.with_(offset_groups=2))
    keys = ("input", "offset", "weight", "bias", "mask")

    def step(convs, *ins):
        loss = 0
        for i, (prob, conv) in enumerate(zip(probs, convs)):
            x, off, w, b, m = ins[5 * i:5 * i + 5]
            loss = loss + (conv(torch.relu(x), off, w, b, mask=m.sigmoid(), **prob.kwargs())
                           ** 2).sum()
        return loss

    ins = [p.tensors(torch.float32, requires_grad=True)[k] for p in probs for k in keys]
    fns = (deform_conv1d, deform_conv2d, deform_conv3d)
    loss = torch.compile(step, fullgraph=True, backend="inductor")(fns, *ins)
    grads = torch.autograd.grad(loss, ins)
    rins = [v.detach().double().requires_grad_() for v in ins]
    rloss = step((deform_conv_ref,) * 3, *rins)
    assert_close(loss.detach(), rloss.detach(), torch.float32, "loss")
    for n, a, e in zip(keys * 3, grads, torch.autograd.grad(rloss, rins)):
        assert_close(a, e, torch.float32, n, tol=1e-4)


@pytest.mark.parametrize("R", R_ALL, ids=DIMS)
def test_export_captures_one_node(R):
    prob, fn = P[R], FUNCS[R]

    class M(torch.nn.Module):
        def forward(self, x, off, w, m):
            return fn(x, off, w, None, mask=m, **prob.kwargs())

    t = prob.tensors(torch.float32)
    args = (t["input"], t["offset"], t["weight"], t["mask"])
    ep = torch.export.export(M(), args)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets == [getattr(torch.ops.deformconv, f"deform_conv{R}d").default]
    assert torch.equal(ep.module()(*args), M()(*args))


def test_docstring_examples_run():
    result = doctest.testmod(deformconv.ops.deform_conv.functional, verbose=False)
    assert result.attempted > 0 and result.failed == 0
