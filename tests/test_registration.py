"""The op is a real PyTorch operator: opcheck, torch.compile without graph breaks, export."""

from __future__ import annotations

import pytest
import torch

from deformconv import deform_conv2d
from deformconv.ops.registry import deform_conv2d_backward_op, deform_conv2d_op
from deformconv.reference import deform_conv2d_ref

from conftest import Case, assert_close_rel


def _op_args(case, dtype=torch.float64, requires_grad=True):
    x, off, w, b, m = case.tensors(dtype, requires_grad=requires_grad)
    return (x, w, off, m, b, *case.stride, *case.padding, *case.dilation)


@pytest.mark.parametrize("case", [Case(), Case(mask=False, bias=False, groups=2, C=4, O=4),
                                  Case(offset_groups=2, C=4, stride=(2, 1))],
                         ids=["v2", "v1-groups", "offset-groups-stride"])
def test_opcheck_forward(case):
    torch.library.opcheck(deform_conv2d_op, _op_args(case))


def test_opcheck_backward():
    case = Case(offset_groups=2, C=4)
    x, w, off, m, b, *params = _op_args(case, requires_grad=False)
    go = torch.randn(case.N, case.O, *case.out_hw, dtype=torch.float64)
    for output_mask in ([True, True, True, True], [False, True, False, True]):
        torch.library.opcheck(deform_conv2d_backward_op,
                              (go, x, w, off, m, b, *params, output_mask))


def test_compile_fullgraph_forward_backward():
    torch._dynamo.reset()
    case = Case(N=2, C=4, H=6, W=6, O=4, offset_groups=2)

    def step(x, off, w, b, m):
        y = deform_conv2d(torch.relu(x), off, w, b, padding=1, mask=m.sigmoid())
        return (y * y).sum()

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    ins = case.tensors(torch.float32, requires_grad=True)
    loss = compiled(*ins)
    grads = torch.autograd.grad(loss, ins)
    rins = [t.detach().double().requires_grad_() for t in ins]
    x, off, w, b, m = rins
    rloss = (deform_conv2d_ref(torch.relu(x), off, w, b, padding=1, mask=m.sigmoid()) ** 2).sum()
    rgrads = torch.autograd.grad(rloss, rins)
    assert_close_rel(loss.detach(), rloss.detach(), 1e-5, "loss")
    for n, a, e in zip(("input", "offset", "weight", "bias", "mask"), grads, rgrads):
        assert_close_rel(a, e, 1e-4, n)


def test_export_captures_one_node():
    class M(torch.nn.Module):
        def forward(self, x, off, w, m):
            return deform_conv2d(x, off, w, None, 1, 1, 1, m)

    x, off, w, _, m = Case(bias=False).tensors(torch.float32)
    ep = torch.export.export(M(), (x, off, w, m))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.deformconv.deform_conv2d.default) == 1
    assert len(targets) == 1, targets
    assert torch.allclose(ep.module()(x, off, w, m), M()(x, off, w, m))
