"""The multi-scale deformable attention Triton kernels (GPU, or the interpreter on CPU)
against the float64 oracle: every dtype, gradients, hostile locations, empty sizes, mixed
(autocast) dtypes, determinism."""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICE
from deformconv import ms_deform_attn
from deformconv.ops import dispatch
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


@pytest.fixture(autouse=True)
def msda_triton(monkeypatch):
    """Triton on every call, NaN-filled buffers the kernels must write, and a record of the
    launches (so a test cannot pass on the PyTorch fallback)."""
    from deformconv.ops.ms_deform_attn.triton import launch

    monkeypatch.setattr(launch, "empty", lambda shape, dtype, device: torch.full(
        shape, float("nan"), dtype=dtype, device=device))
    calls = []
    for name in ("ms_deform_attn_fwd", "ms_deform_attn_bwd"):
        real = getattr(launch, name)

        def spy(*args, _real=real, _name=name):
            calls.append(_name)
            return _real(*args)
        monkeypatch.setattr(launch, name, spy)
    dispatch.set_backend("triton")
    yield calls
    assert not dispatch._failed, dispatch._failed


def _run(t, g):
    out = ms_deform_attn(*(t[k] for k in ARGS))
    grads = torch.autograd.grad(out, [t[k] for k in GRADS], g)
    return out, grads


def _oracle(t, g):
    c = {k: v.detach().cpu() for k, v in t.items()}
    args = (c["value"], c["spatial_shapes"], c["sampling_locations"], c["attention_weights"])
    return ms_deform_attn_ref(*args), ms_deform_attn_grads_ref(g.cpu(), *args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_oracle(case, dtype, msda_triton):
    t = make_inputs(**CASES[case], dtype=dtype, device=DEVICE, requires_grad=True, seed=case)
    N, Q = t["sampling_locations"].shape[:2]
    M, D = t["value"].shape[2:]
    g = torch.randn(N, Q, M * D, generator=torch.Generator().manual_seed(7)).to(dtype)
    out, grads = _run(t, g.to(DEVICE))
    assert msda_triton == ["ms_deform_attn_fwd", "ms_deform_attn_bwd"]
    ref_out, ref_grads = _oracle(t, g.double())
    assert out.dtype == dtype
    assert_close(out.cpu(), ref_out, dtype, name="output")
    for name, got, want in zip(GRADS, grads, ref_grads):
        assert got.dtype == dtype
        assert_close(got.cpu(), want, dtype, name=name)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e30])
def test_hostile_locations(bad, msda_triton):
    t = make_inputs(N=2, Q=6, M=2, D=3, dtype=torch.float32, device=DEVICE)
    loc = t["sampling_locations"].clone()
    hit = torch.zeros(loc.shape[:-1], dtype=torch.bool, device=DEVICE)
    hit[:, ::3] = True
    loc[..., 0][hit] = bad
    att = t["attention_weights"].clone()
    att[hit] = float("inf")  # a skipped sample weighs 0 whatever its weight
    t["sampling_locations"], t["attention_weights"] = loc, att
    for k in GRADS:
        t[k].requires_grad_(True)
    g = torch.ones(2, 6, 6, device=DEVICE)
    out, grads = _run(t, g)
    clean = {k: v.detach() for k, v in t.items()}
    clean["attention_weights"] = clean["attention_weights"].masked_fill(hit, 0.0)
    clean["sampling_locations"] = clean["sampling_locations"].masked_fill(hit[..., None], 0.5)
    ref_out, ref_grads = _oracle(clean, g.double())
    assert_close(out.cpu(), ref_out, name="output")
    assert_close(grads[0].cpu(), ref_grads[0], name="value")
    assert (grads[1][hit] == 0).all() and (grads[2][hit] == 0).all()
    assert_close(grads[1][~hit].cpu(), ref_grads[1][~hit.cpu()], name="locations")


@pytest.mark.parametrize("sizes", [dict(N=0), dict(Q=0), dict(shapes=((0, 5), (3, 2)))])
def test_empty_sizes(sizes):
    t = make_inputs(**sizes, dtype=torch.float32, device=DEVICE, requires_grad=True)
    N, Q = t["sampling_locations"].shape[:2]
    M, D = t["value"].shape[2:]
    g = torch.ones(N, Q, M * D, device=DEVICE)
    out, grads = _run(t, g)
    ref_out, ref_grads = _oracle(t, g.double())
    torch.testing.assert_close(out.cpu().double(), ref_out, atol=1e-5, rtol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.cpu().double(), want, atol=1e-5, rtol=0)


def test_mixed_dtypes_of_the_autocast_rule():
    t = make_inputs(dtype=torch.float32, device=DEVICE)
    t["value"] = t["value"].bfloat16()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = ms_deform_attn(*(t[k] for k in ARGS))
    assert out.dtype == torch.bfloat16
    ref = ms_deform_attn_ref(t["value"].double().cpu(), t["spatial_shapes"].cpu(),
                             t["sampling_locations"].cpu(), t["attention_weights"].cpu())
    assert_close(out.float().cpu(), ref, torch.bfloat16)


def test_deterministic_mode_takes_the_sorted_scatter():
    t = make_inputs(N=2, Q=20, M=2, D=4, shapes=((3, 3),), P=4, dtype=torch.float32,
                    device=DEVICE, requires_grad=True)
    g = torch.randn(2, 20, 8, device=DEVICE)
    torch.use_deterministic_algorithms(True)
    try:
        _, grads = _run(t, g)
    finally:
        torch.use_deterministic_algorithms(False)
    with dispatch.use_backend("torch"):
        _, torch_grads = _run(t, g)
    assert torch.equal(grads[0], torch_grads[0])
    assert_close(grads[1], torch_grads[1], name="locations")
