"""deform_conv1d and deform_conv3d against the float64 oracle, the conventions' pinned values,
hostile and bad input, and the registered-operator machinery."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deformconv.ops.deform_conv.functional
from deformconv import deform_conv1d, deform_conv3d
from deformconv.ops.deform_conv import library
from deformconv.ops.deform_conv import torch_kernels as torch_impl
from deformconv.ops.deform_conv.reference import deform_conv_ref, sample
from deformconv.testing import Problem, assert_close

FUNCS = {1: deform_conv1d, 3: deform_conv3d}
P1 = Problem(N=2, C=4, O=6, size=(9,), kernel=(3,))
P3 = Problem(N=2, C=4, O=4, size=(4, 5, 4), kernel=(3, 3, 2), padding=(1, 1, 0))

GRID = {
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


def _run(fn, prob: Problem, t, go):
    y = fn(**t, **prob.kwargs())
    names = _present(t)
    return y, names, torch.autograd.grad(y, [t[k] for k in names], go)


def _close(a, b, dtype, name, tol, may_vanish):
    if may_vanish and b.numel() and not b.detach().any():
        # Random shapes can put every sample outside (e.g. size 1, large offsets, no bias).
        assert not a.detach().any(), f"{name}: expected all zeros"
    else:
        assert_close(a, b, dtype, name, tol)


def _compare(prob: Problem, dtype=torch.float64, seed=0, tol=None, may_vanish=False):
    R = prob.ndim
    t = prob.tensors(dtype, seed=seed, requires_grad=True)
    ref_t = {k: (v.detach().double().requires_grad_() if v is not None else None)
             for k, v in t.items()}
    go = prob.grad_out(dtype)
    y, names, got = _run(FUNCS[R], prob, t, go)
    ry, _, want = _run(deform_conv_ref, prob, ref_t, go.double())
    assert y.dtype == dtype
    _close(y, ry, dtype, "output", tol, may_vanish)
    for n, a, b in zip(names, got, want):
        assert a.dtype == dtype, n
        _close(a, b, dtype, n, None if tol is None else 10 * tol, may_vanish)


@pytest.mark.parametrize("name", list(GRID))
def test_forward_and_gradients_match_oracle(name):
    _compare(GRID[name])


@pytest.mark.parametrize("budget", [1, 1 << 30], ids=["slabs", "whole-batch"])
@pytest.mark.parametrize("R", [1, 3])
def test_chunking_does_not_matter(monkeypatch, budget, R):
    # budget 1: one output slab per chunk; 1 << 30: all samples in one chunk.
    monkeypatch.setattr(torch_impl, "COLUMN_BUDGET_BYTES", budget)
    prob = (P1.with_(N=3, size=(11,), stride=2, offset_groups=2) if R == 1
            else P3.with_(N=3, size=(5, 4, 4), stride=(1, 2, 1), offset_groups=2))
    _compare(prob)


@pytest.mark.parametrize("prob", [P1.with_(N=1, C=2, O=2, size=(6,)),
                                  P3.with_(N=1, C=2, O=2, size=(2, 2, 3), kernel=(2, 1, 2),
                                           padding=(0, 0, 1), stride=(1, 1, 2))],
                         ids=["1d", "3d"])
def test_gradcheck(prob):
    t = prob.tensors(requires_grad=True)
    names = _present(t)
    fn = FUNCS[prob.ndim]

    def f(*args):
        return fn(**dict(zip(names, args)), **prob.kwargs())

    assert torch.autograd.gradcheck(f, [t[k] for k in names])


@pytest.mark.parametrize("R,conv", [(1, F.conv1d), (3, F.conv3d)])
def test_zero_offsets_equal_conv(R, conv):
    prob = (P1.with_(C=6, O=4, groups=2, offset_groups=3, size=(12,), stride=2, dilation=2)
            if R == 1 else P3.with_(C=4, O=6, groups=2, stride=(1, 2, 1), dilation=(2, 1, 1),
                                    size=(6, 5, 5), padding=(2, 1, 0)))
    t = prob.tensors()
    off = torch.zeros_like(t["offset"])
    y = FUNCS[R](t["input"], off, t["weight"], t["bias"], **prob.kwargs())
    want = conv(t["input"], t["weight"], t["bias"], groups=prob.groups, **prob.kwargs())
    assert_close(y, want)
    # A mask of ones is v1.
    y1 = FUNCS[R](t["input"], off, t["weight"], t["bias"], mask=torch.ones_like(t["mask"]),
                  **prob.kwargs())
    assert torch.equal(y1, y)


@pytest.mark.parametrize("shift", [(2,), (-1,), (1, -1, 2), (0, 2, -1)])
def test_integer_offsets_equal_conv_of_shifted_input(shift):
    R = len(shift)
    # No padding: the padded border of a convolution would hide samples the shift brings in.
    prob = (P1.with_(size=(10,)) if R == 1 else P3.with_(size=(5, 6, 5))).with_(padding=0)
    t = prob.tensors()
    x = t["input"]
    off = torch.zeros_like(t["offset"]).unflatten(1, (-1, R))
    off[:] = torch.tensor(shift, dtype=off.dtype).view(1, 1, R, *[1] * R)
    y = FUNCS[R](x, off.flatten(1, 2), t["weight"], t["bias"], **prob.kwargs())
    # Shifted input: x'[s] = x[s + shift], zero outside.
    shifted = torch.zeros_like(x)
    dst = [slice(None), slice(None)]
    src = [slice(None), slice(None)]
    for s, n in zip(shift, x.shape[2:]):
        dst.append(slice(max(0, -s), n - max(0, s)))
        src.append(slice(max(0, s), n - max(0, -s)))
    shifted[tuple(dst)] = x[tuple(src)]
    conv = F.conv1d if R == 1 else F.conv3d
    assert_close(y, conv(shifted, t["weight"], t["bias"], **prob.kwargs()))


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


@pytest.mark.parametrize("R", [1, 3])
def test_hostile_offsets_contribute_nothing(R):
    prob = P1.with_(size=(8,)) if R == 1 else P3
    t = prob.tensors(requires_grad=False)
    off = t["offset"].clone().unflatten(1, (-1, R))  # (N, G*K, R, *o)
    bad = torch.zeros(off.shape[:2] + off.shape[3:], dtype=torch.bool)
    values = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30]
    flat = bad.view(-1)
    picks = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:10]
    for i, j in enumerate(picks.tolist()):
        flat[j] = True
        pos = list(torch.unravel_index(torch.tensor(j), bad.shape))
        off[(pos[0], pos[1], i % R, *pos[2:])] = values[i % len(values)]
    off = off.flatten(1, 2)
    leaves = {k: v.requires_grad_() for k, v in dict(t, offset=off).items() if v is not None}
    y = FUNCS[R](**leaves, **prob.kwargs())
    go = prob.grad_out()
    grads = dict(zip(leaves, torch.autograd.grad(y, list(leaves.values()), go)))
    # Expected: the same call with those taps masked out (their offsets set to 0).
    clean_mask = t["mask"].masked_fill(bad, 0.0)
    clean_off = off.detach().unflatten(1, (-1, R)).masked_fill(bad.unsqueeze(2), 0.0)
    want = FUNCS[R](t["input"], clean_off.flatten(1, 2), t["weight"], t["bias"],
                    mask=clean_mask, **prob.kwargs())
    assert_close(y, want)
    for name in ("input", "weight", "bias"):
        assert torch.isfinite(grads[name]).all()
    g_off = grads["offset"].unflatten(1, (-1, R))
    assert torch.isfinite(g_off).all() and torch.isfinite(grads["mask"]).all()
    assert (g_off.permute(0, 1, *range(3, 3 + R), 2)[bad] == 0).all()
    assert (grads["mask"][bad] == 0).all()
    assert (grads["mask"][~bad] != 0).any()


def _good3():
    t = P3.tensors()
    return t["input"], t["offset"], t["weight"], t["bias"], t["mask"]


BAD = [
    ("input 4-D", lambda x, o, w, b, m: (x[0], o, w, b, m), ValueError, "input must be 5-D"),
    ("mask groups", lambda x, o, w, b, m: (x, o, w, b, torch.cat([m, m], 1)), ValueError,
     r"mask channels must be offset_groups\*kD\*kH\*kW = 1\*18 = 18, got 36"),
    ("offset channels", lambda x, o, w, b, m: (x, o[:, :-1], w, b, m), ValueError,
     r"offset channels must be a positive multiple of 3\*kD\*kH\*kW = 54, got 53"),
    ("offset size", lambda x, o, w, b, m: (x, o[..., :-1], w, b, m[..., :-1]), ValueError,
     r"offset spatial size must be the output size \(4, 5, 3\), got \(4, 5, 2\)"),
    ("weight groups", lambda x, o, w, b, m: (x, o, w[:, :3], b, m), ValueError,
     r"input channels \(4\) must be a multiple of weight.shape\[1\] \(3\)"),
    ("dtype", lambda x, o, w, b, m: (x, o.float(), w, b, m), TypeError,
     "offset must have the input's dtype torch.float64, got torch.float32"),
    ("bias", lambda x, o, w, b, m: (x, o, w, b[:2], m), ValueError,
     r"bias must have shape \(4,\), got \(2,\)"),
    ("not a tensor", lambda x, o, w, b, m: (x, o.tolist(), w, b, m), TypeError,
     "offset must be a Tensor, got list"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_messages_3d(case):
    _, change, exc, msg = case
    x, o, w, b, m = change(*_good3())
    with pytest.raises(exc, match=msg):
        deform_conv3d(x, o, w, b, padding=(1, 1, 0), mask=m)


def test_bad_parameters_and_1d_messages():
    t = P1.tensors()
    args = (t["input"], t["offset"], t["weight"])
    with pytest.raises(TypeError, match=r"stride must be an int or a tuple of 1 int, got \(1, 1\)"):
        deform_conv1d(*args, stride=(1, 1), padding=1)
    with pytest.raises(ValueError, match="padding must be >= 0, got -1"):
        deform_conv1d(*args, padding=-1)
    with pytest.raises(ValueError, match="output would be -1, smaller than 1: input 1, kernel 3"):
        deform_conv1d(t["input"][..., :1], t["offset"], t["weight"])
    with pytest.raises(ValueError, match=r"mask channels must be offset_groups\*kW = 1\*3 = 3, "
                                         r"got 6"):
        deform_conv1d(*args, padding=1, mask=torch.cat([t["mask"]] * 2, 1))
    with pytest.raises(TypeError, match="dilation must be an int or a tuple of 3 ints"):
        deform_conv3d(*_good3()[:3], dilation=(1, 1))


@pytest.mark.parametrize("R", [1, 3])
def test_batch_zero(R):
    prob = (P1 if R == 1 else P3).with_(N=0)
    t = prob.tensors(requires_grad=True)
    y = FUNCS[R](**t, **prob.kwargs())
    assert y.shape == (0, prob.O, *prob.out)
    grads = torch.autograd.grad(y.sum(), [t[k] for k in _present(t)])
    for k, g in zip(_present(t), grads):
        assert g.shape == t[k].shape
    assert (grads[2] == 0).all()  # weight


@pytest.mark.parametrize("R", [1, 3])
def test_non_contiguous_inputs(R):
    prob = P1 if R == 1 else P3
    t = prob.tensors()
    # The same values through transposed/strided storage.
    nc = {k: (v.transpose(0, -1).contiguous().transpose(0, -1) if v.dim() > 1 else
              torch.stack([v, v], 1)[:, 0]) for k, v in t.items()}
    assert not nc["input"].is_contiguous() and not nc["offset"].is_contiguous()
    leaves = {k: v.requires_grad_() for k, v in nc.items()}
    y = FUNCS[R](**leaves, **prob.kwargs())
    grads = torch.autograd.grad(y, list(leaves.values()), prob.grad_out())
    ct = {k: v.clone().requires_grad_() for k, v in t.items()}
    ry = FUNCS[R](**ct, **prob.kwargs())
    rgrads = torch.autograd.grad(ry, list(ct.values()), prob.grad_out())
    assert torch.allclose(y, ry, rtol=0, atol=1e-13)
    for a, b in zip(grads, rgrads):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("R", [1, 3])
def test_low_precision_against_oracle(R, dtype):
    prob = (P1 if R == 1 else P3).with_(offset_scale=1.5)
    _compare(prob, dtype)


def test_determinism():
    prob = P3.with_(offset_scale=0.7)  # many positions share corners
    t = prob.tensors(torch.float32, requires_grad=True)
    runs = [_run(deform_conv3d, prob, t, prob.grad_out(torch.float32))[2] for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_double_backward_is_a_clear_error():
    t = P1.tensors(requires_grad=True)
    y = deform_conv1d(**t, **P1.kwargs())
    (g,) = torch.autograd.grad(y.sum(), t["offset"], create_graph=True)
    with pytest.raises(RuntimeError, match="deform_conv1d supports first-order gradients only"):
        g.sum().backward()


def test_autocast_runs_in_float32():
    t = P3.tensors(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = deform_conv3d(t["input"], t["offset"].bfloat16(), t["weight"], t["bias"],
                          mask=t["mask"], **P3.kwargs())
    assert y.dtype == torch.float32


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(R=st.sampled_from([1, 3]), data=st.data())
def test_property_random_shapes(R, data):
    ints = st.integers
    kernel = tuple(data.draw(ints(1, 3)) for _ in range(R))
    dil = tuple(data.draw(ints(1, 2)) for _ in range(R))
    pad = tuple(data.draw(ints(0, 2)) for _ in range(R))
    stride = tuple(data.draw(ints(1, 2)) for _ in range(R))
    top = 9 if R == 1 else 3
    size = tuple(max(data.draw(ints(1, top)), d * (k - 1) + 1 - 2 * p)
                 for d, k, p in zip(dil, kernel, pad))
    groups, og = data.draw(ints(1, 2)), data.draw(ints(1, 2))
    prob = Problem(N=data.draw(ints(1, 2)), C=2 * groups * og, O=2 * groups, size=size,
                   kernel=kernel, stride=stride, padding=pad, dilation=dil, groups=groups,
                   offset_groups=og, mask=data.draw(st.booleans()),
                   bias=data.draw(st.booleans()), offset_scale=data.draw(st.sampled_from(
                       [0.5, 2.0, 5.0])))
    _compare(prob, seed=data.draw(ints(0, 1000)), may_vanish=True)


@pytest.mark.parametrize("R", [1, 3])
def test_opcheck(R):
    prob = (P1.with_(offset_groups=2, size=(5,)) if R == 1 else
            P3.with_(mask=False, groups=2, O=2, size=(2, 3, 2), kernel=(2, 2, 1)))
    t = prob.tensors(requires_grad=True)
    params = [list(prob.strides), list(prob.paddings), list(prob.dilations)]
    args = (t["input"], t["weight"], t["offset"], t["mask"], t["bias"], *params)
    torch.library.opcheck(library.OPS[R], args)
    bwd = library.BACKWARD_OPS[R]
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    for output_mask in ([True, True, True, True], [False, True, False, True]):
        torch.library.opcheck(bwd, (prob.grad_out(), *plain, output_mask))


@pytest.mark.slow
def test_compile_fullgraph_forward_backward():
    # One compiled graph with both ops: one inductor warm-up for the two.
    torch._dynamo.reset()
    probs = (P1.with_(offset_groups=2), P3.with_(offset_groups=2))
    keys = ("input", "offset", "weight", "bias", "mask")

    def step(conv1, conv3, *ins):
        loss = 0
        for prob, conv, (x, off, w, b, m) in zip(probs, (conv1, conv3), (ins[:5], ins[5:])):
            loss = loss + (conv(torch.relu(x), off, w, b, mask=m.sigmoid(), **prob.kwargs())
                           ** 2).sum()
        return loss

    ins = [p.tensors(torch.float32, requires_grad=True)[k] for p in probs for k in keys]
    loss = torch.compile(step, fullgraph=True, backend="inductor")(deform_conv1d,
                                                                    deform_conv3d, *ins)
    grads = torch.autograd.grad(loss, ins)
    rins = [v.detach().double().requires_grad_() for v in ins]
    rloss = step(deform_conv_ref, deform_conv_ref, *rins)
    assert_close(loss.detach(), rloss.detach(), torch.float32, "loss")
    for n, a, e in zip(keys * 2, grads, torch.autograd.grad(rloss, rins)):
        assert_close(a, e, torch.float32, n, tol=1e-4)


@pytest.mark.parametrize("R", [1, 3])
def test_export_captures_one_node(R):
    prob = P1 if R == 1 else P3
    fn = FUNCS[R]

    class M(torch.nn.Module):
        def forward(self, x, off, w, m):
            return fn(x, off, w, None, mask=m, **prob.kwargs())

    t = prob.tensors(torch.float32)
    args = (t["input"], t["offset"], t["weight"], t["mask"])
    ep = torch.export.export(M(), args)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets == [getattr(torch.ops.deformconv, f"deform_conv{R}d").default]
    assert torch.equal(ep.module()(*args), M()(*args))


def test_docstring_examples():
    assert doctest.testmod(deformconv.ops.deform_conv.functional).failed == 0


def test_triton_failure_falls_back_with_a_warning(broken_triton):
    # The central dispatch, on CPU tensors with the Triton backend forced: a failing launcher
    # warns once and hands the call (and later ones) to the pure-PyTorch kernel.
    dispatch = broken_triton("deform_conv_fwd", "ptxas died")
    t = P1.tensors()
    with pytest.warns(RuntimeWarning, match="Triton deform_conv1d forward kernel failed .*ptxas"):
        y = deform_conv1d(**t, **P1.kwargs())
    assert "deform_conv1d forward" in dispatch._failed
    want = torch_impl.deform_conv_fwd(t["input"], t["weight"], t["offset"], t["mask"],
                                            t["bias"], [1], [1], [1])
    assert torch.equal(y, want)
