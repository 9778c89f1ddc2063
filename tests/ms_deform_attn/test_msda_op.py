"""``ms_deform_attn`` on the pure-PyTorch kernels against the float64 oracle: every dtype,
gradients, gradcheck, empty sizes, non-contiguous inputs, hostile locations, bad arguments."""

from __future__ import annotations

import pytest
import torch

from deformconv import ms_deform_attn
from deformconv.ops.ms_deform_attn import torch_kernels
from deformconv.ops.ms_deform_attn.reference import (
    ARGS,
    CASES,
    GRAD_ARGS,
    make_inputs,
    ms_deform_attn_grads_ref,
    ms_deform_attn_ref,
)
from deformconv.testing import assert_close

GRADS = GRAD_ARGS


def _call(t):
    return ms_deform_attn(*(t[k] for k in ARGS))


def _oracle(t, g):
    args = (t["value"], t["spatial_shapes"], t["sampling_locations"], t["attention_weights"])
    return ms_deform_attn_ref(*args), ms_deform_attn_grads_ref(g, *args)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_oracle(case, dtype, device):
    t = make_inputs(**CASES[case], dtype=dtype, device=device, requires_grad=True)
    out = _call(t)
    assert out.dtype == dtype and out.is_contiguous()
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64).to(dtype)
    grads = torch.autograd.grad(out, [t[k] for k in GRADS], g.to(device))
    ref_out, ref_grads = _oracle({k: v.detach().cpu() for k, v in t.items()}, g)
    assert_close(out.cpu(), ref_out, dtype, name="output")
    for name, got, want in zip(GRADS, grads, ref_grads):
        assert got.dtype == dtype
        assert_close(got.cpu(), want, dtype, name=name)


def test_gradcheck():
    t = make_inputs(N=2, Q=3, M=2, D=3, shapes=((3, 4), (2, 2)), P=2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: ms_deform_attn(*a), tuple(t[k] for k in ARGS))


@pytest.mark.parametrize("sizes", [dict(N=0), dict(Q=0), dict(P=0),
                                   dict(shapes=((0, 5), (3, 2))), dict(shapes=((3, 0), (0, 0)))])
def test_empty_sizes(sizes):
    t = make_inputs(**sizes, requires_grad=True)
    out = _call(t)
    N, Q = t["sampling_locations"].shape[:2]
    M, D = t["value"].shape[2:]
    assert out.shape == (N, Q, M * D)
    grads = torch.autograd.grad(out, [t[k] for k in GRADS], torch.ones_like(out))
    ref_out, ref_grads = _oracle({k: v.detach() for k, v in t.items()}, torch.ones_like(out))
    torch.testing.assert_close(out, ref_out, atol=1e-13, rtol=0)
    for got, want, k in zip(grads, ref_grads, GRADS):
        assert got.shape == t[k].shape
        torch.testing.assert_close(got, want, atol=1e-13, rtol=0)


def test_empty_level_contributes_zero_with_others_present():
    t = make_inputs(shapes=((0, 4), (3, 5)))
    keep = t["sampling_locations"].clone()
    keep[:, :, :, 0] = 0.5  # every sample of the empty level at its centre
    t["sampling_locations"] = keep
    ref = ms_deform_attn_ref(t["value"], t["spatial_shapes"], keep, t["attention_weights"])
    assert ref.abs().max() > 0
    assert_close(_call(t), ref)


def _strided(t):
    """The same values, every other element of a buffer twice as large (not contiguous)."""
    big = t.new_zeros(*t.shape, 2)
    big[..., 0] = t
    return big[..., 0]


def test_non_contiguous():
    t = make_inputs(N=2, Q=4, M=3, D=4, requires_grad=False)
    nc = {k: _strided(v) for k, v in t.items()}
    assert not any(v.is_contiguous() for v in nc.values())
    for k in GRADS:
        nc[k].requires_grad_(True)
    out = _call(nc)
    grads = torch.autograd.grad(out, [nc[k] for k in GRADS], torch.ones_like(out))
    ref_out, ref_grads = _oracle(t, torch.ones_like(out))
    assert_close(out, ref_out)
    for name, got, want in zip(GRADS, grads, ref_grads):
        assert_close(got, want, name=name)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 1e30, -1e30])
def test_hostile_locations_contribute_zero(bad):
    t = make_inputs(N=2, Q=6, M=2, D=3, requires_grad=False)
    loc = t["sampling_locations"].clone()
    hostile = torch.zeros(loc.shape[:-1], dtype=torch.bool)
    hostile[:, ::3] = True  # queries 0 and 3; flipped: 5 and 2; 1 and 4 stay clean
    loc[..., 0][hostile] = bad
    loc[..., 1][hostile.flip(1)] = bad
    hit = hostile | hostile.flip(1)
    t["sampling_locations"] = loc.requires_grad_(True)
    t["value"].requires_grad_(True)
    t["attention_weights"].requires_grad_(True)
    out = _call(t)
    grads = torch.autograd.grad(out, [t[k] for k in GRADS], torch.ones_like(out))
    # The oracle on the same problem with the hostile samples' weights set to 0.
    clean = {k: v.detach() for k, v in t.items()}
    clean["attention_weights"] = clean["attention_weights"].masked_fill(hit, 0.0)
    clean["sampling_locations"] = clean["sampling_locations"].masked_fill(hit[..., None], 0.5)
    ref_out, ref_grads = _oracle(clean, torch.ones_like(out))
    assert_close(out, ref_out)
    assert_close(grads[0], ref_grads[0], name="value")
    assert torch.isfinite(grads[1]).all() and (grads[1][hit] == 0).all()
    assert (grads[2][hit] == 0).all()
    assert_close(grads[1][~hit], ref_grads[1][~hit], name="locations")
    assert_close(grads[2][~hit], ref_grads[2][~hit], name="weights")


def test_hostile_locations_with_infinite_weight_contribute_zero():
    t = make_inputs(N=1, Q=2, M=1, D=2, shapes=((3, 3),), P=1)
    t["sampling_locations"][:] = float("nan")
    t["attention_weights"][:] = float("inf")
    assert (_call(t) == 0).all()


@pytest.mark.parametrize("rows_per_chunk", [1, 2])  # 2: chunks straddle batch elements
def test_chunking_matches_one_chunk(monkeypatch, rows_per_chunk):
    t = make_inputs(N=3, Q=9, M=2, D=3, requires_grad=True)
    out = _call(t)
    grads = torch.autograd.grad(out, [t[k] for k in GRADS], torch.ones_like(out))
    M, L, P = t["attention_weights"].shape[2:]
    monkeypatch.setattr(torch_kernels, "PLAN_BUDGET_BYTES",
                        rows_per_chunk * M * L * P * torch_kernels.SAMPLE_BYTES)
    out1 = _call(t)
    grads1 = torch.autograd.grad(out1, [t[k] for k in GRADS], torch.ones_like(out))
    torch.testing.assert_close(out1, out, atol=1e-14, rtol=0)
    for a, b in zip(grads1, grads):
        torch.testing.assert_close(a, b, atol=1e-14, rtol=0)


def test_value_gradient_is_bitwise_repeatable():
    t = make_inputs(N=2, Q=40, M=2, D=4, shapes=((3, 3),), P=4, dtype=torch.float32,
                    requires_grad=True)
    out = _call(t)
    g = torch.randn_like(out)
    first = torch.autograd.grad(out, t["value"], g, retain_graph=True)[0]
    assert torch.equal(first, torch.autograd.grad(out, t["value"], g)[0])


def test_im2col_step_is_accepted_and_ignored():
    t = make_inputs()
    args = [t[k] for k in ARGS]
    assert torch.equal(ms_deform_attn(*args, 64), ms_deform_attn(*args, im2col_step=1))


def test_paths_off_the_cpu_match(monkeypatch):
    """What the kernel does off the CPU, run on CPU: the location and weight gradients' dot
    products by a gather and a batched product (not the sampled matrix product) and the value
    gradient's rows updated by gather, add and put (not ``index_add_``), against the CPU
    paths and the oracle."""
    t = make_inputs(**CASES[3], requires_grad=True)
    g = torch.randn(2, 4, 4 * 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    fast = torch.autograd.grad(_call(t), [t[k] for k in GRADS], g)
    monkeypatch.setattr(torch_kernels, "SDDMM_DEVICES", ())
    monkeypatch.setattr(torch_kernels, "INDEX_ADD_DEVICES", ())
    monkeypatch.setattr(torch_kernels, "PLAN_BUDGET_BYTES", 1)  # sub-chunks of one bag
    slow = torch.autograd.grad(_call(t), [t[k] for k in GRADS], g)
    _, ref = _oracle({k: v.detach() for k, v in t.items()}, g)
    for name, a, b, want in zip(GRADS, fast, slow, ref):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=0)
        assert_close(b, want, name=name)


@pytest.mark.parametrize("shapes", [((5, 7), (1, 1), (1, 4), (3, 1)), ((2, 2),)])
def test_border_bands_match_oracle(shapes):
    """Every sample within a pixel of the edge (floor -1 or the last pixel along each axis,
    where the kernel's two slots of that axis trade places), on maps of 1 and 2 pixels too."""
    t = make_inputs(N=2, Q=6, M=2, D=3, shapes=shapes, P=4)
    sizes = t["spatial_shapes"].flip(-1).to(torch.float64).view(1, 1, 1, -1, 1, 2)
    g = torch.Generator().manual_seed(4)
    frac = torch.rand(t["sampling_locations"].shape, generator=g, dtype=torch.float64) * 0.9
    frac += 0.05  # pixel coordinate strictly between -1 and 0, or between size-1 and size
    low = torch.rand(frac.shape, generator=g) < 0.5
    pix = torch.where(low, frac - 1, sizes - 1 + frac)
    loc = ((pix + 0.5) / sizes).requires_grad_(True)
    t["sampling_locations"] = loc
    t["value"].requires_grad_(True)
    t["attention_weights"].requires_grad_(True)
    out = _call(t)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(out, [t[k] for k in GRADS], go)
    ref_out, ref_grads = _oracle({k: v.detach() for k, v in t.items()}, go)
    assert ref_out.abs().max() > 0.1 and ref_grads[1].abs().max() > 0.1
    assert_close(out, ref_out)
    for name, got, want in zip(GRADS, grads, ref_grads):
        assert_close(got, want, name=name)
    assert torch.autograd.gradcheck(lambda *a: ms_deform_attn(*a), tuple(t[k] for k in ARGS))
