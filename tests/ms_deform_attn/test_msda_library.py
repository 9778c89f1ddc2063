"""The registered operator: opcheck, torch.compile(fullgraph=True) and torch.export with
dynamic N and Q, autocast, first-order gradients only, torch.func, the backend dispatch."""

from __future__ import annotations

import pytest
import torch

from deformconv import ms_deform_attn
from deformconv.ops.ms_deform_attn import library
from deformconv.ops.ms_deform_attn.reference import make_inputs
from deformconv.testing import assert_close

ARGS = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
        "attention_weights")
GRADS = ("value", "sampling_locations", "attention_weights")


def _args(t):
    return [t[k] for k in ARGS]


def test_opcheck():
    t = make_inputs(N=2, Q=3, M=2, D=3, shapes=((3, 4), (2, 2)), P=2, requires_grad=True)
    torch.library.opcheck(library.ms_deform_attn_op, _args(t))


def _run(fn, t):
    out = fn(*_args(t))
    grads = torch.autograd.grad(out, [t[k] for k in GRADS], torch.ones_like(out))
    return out, grads


def test_compile_fullgraph_dynamic_batch_and_queries():
    torch._dynamo.reset()
    compiled = torch.compile(ms_deform_attn, fullgraph=True, dynamic=True)
    for N, Q in ((2, 5), (3, 7), (1, 4)):
        t = make_inputs(N=N, Q=Q, dtype=torch.float32, requires_grad=True, seed=N)
        out, grads = _run(compiled, t)
        ref_out, ref_grads = _run(ms_deform_attn, t)
        torch.testing.assert_close(out, ref_out)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b)


class _Attn(torch.nn.Module):
    def forward(self, value, spatial_shapes, level_start_index, loc, weights):
        return ms_deform_attn(value, spatial_shapes, level_start_index, loc, weights)


def test_export_dynamic_batch_and_queries():
    t = make_inputs(N=2, Q=5, dtype=torch.float32)
    N, Q = torch.export.Dim("N", min=1), torch.export.Dim("Q", min=1)
    shapes = ({0: N}, None, None, {0: N, 1: Q}, {0: N, 1: Q})
    ep = torch.export.export(_Attn(), tuple(_args(t)), dynamic_shapes=shapes)
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert "deformconv.ms_deform_attn.default" in targets
    other = make_inputs(N=3, Q=8, dtype=torch.float32, seed=1)
    torch.testing.assert_close(ep.module()(*_args(other)), ms_deform_attn(*_args(other)))


def test_autocast_cpu_casts_value_only_to_low_precision():
    t = make_inputs(dtype=torch.float32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ms_deform_attn(*_args(t))
    assert out.dtype == torch.bfloat16
    # The rule: value in bfloat16, locations and weights kept in float32.
    expected = ms_deform_attn(t["value"].detach().bfloat16().float(), t["spatial_shapes"],
                              t["level_start_index"], t["sampling_locations"].detach(),
                              t["attention_weights"].detach())
    assert_close(out.float(), expected, torch.bfloat16)
    torch.testing.assert_close(out.float(), expected, atol=0, rtol=2 ** -8)
    grads = torch.autograd.grad(out.float().sum(), [t[k] for k in GRADS])
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_autocast_mixed_arguments_are_accepted():
    t = make_inputs(dtype=torch.float32)
    t["value"] = t["value"].bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ms_deform_attn(*_args(t)).dtype == torch.bfloat16


def test_double_backward_raises():
    t = make_inputs(requires_grad=True)
    out = ms_deform_attn(*_args(t))
    (gv,) = torch.autograd.grad(out.square().sum(), t["value"], create_graph=True)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        gv.sum().backward()


def test_torch_func_grad_says_use_autograd():
    t = make_inputs()

    def loss(v):
        return ms_deform_attn(v, *_args(t)[1:]).sum()

    with pytest.raises(RuntimeError, match="ms_deform_attn: torch.func autodiff"):
        torch.func.grad(loss)(t["value"])


def test_backend_torch_and_fallback_warning(broken_triton):
    t = make_inputs(dtype=torch.float32, requires_grad=True)
    expected, expected_grads = _run(ms_deform_attn, t)
    dispatch = broken_triton("ms_deform_attn_fwd", "no GPU here")
    with pytest.warns(RuntimeWarning, match="no GPU here"):
        out = ms_deform_attn(*_args(t))
    assert "ms_deform_attn forward" in dispatch._failed
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    with dispatch.use_backend("torch"):
        out, grads = _run(ms_deform_attn, t)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
