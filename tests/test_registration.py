"""The op is a real PyTorch operator: opcheck of the forward and the backward.

torch.compile (inductor, fullgraph, dynamic shapes) and torch.export are tested in
test_dynamic.py."""

from __future__ import annotations

import pytest
import torch

from deformconv.ops.deform_conv.library import deform_conv2d_backward_op, deform_conv2d_op
from deformconv.testing import Problem


def _op_args(p, requires_grad=True):
    t = p.tensors(requires_grad=requires_grad)
    return (t["input"], t["weight"], t["offset"], t["mask"], t["bias"], *p.strides,
            *p.paddings, *p.dilations)


@pytest.mark.parametrize("p", [Problem(), Problem(mask=False, bias=False, groups=2, C=4, O=4),
                               Problem(offset_groups=2, C=4, stride=(2, 1))],
                         ids=["v2", "v1-groups", "offset-groups-stride"])
def test_opcheck_forward(p):
    torch.library.opcheck(deform_conv2d_op, _op_args(p))


def test_opcheck_backward():
    p = Problem(offset_groups=2, C=4)
    x, w, off, m, b, *params = _op_args(p, requires_grad=False)
    go = p.grad_out()
    for output_mask in ([True, True, True, True], [False, True, False, True]):
        torch.library.opcheck(deform_conv2d_backward_op,
                              (go, x, w, off, m, b, *params, output_mask))
