"""On CPU, forward and backward are bitwise repeatable run to run, in every dimensionality."""

import pytest
import torch

from deformconv import deform_conv1d, deform_conv2d, deform_conv3d
from deformconv.testing import Problem

# Offset groups 2, conv groups 2, offsets that pile many samples on the same places, so the
# input gradient sums many contributions to each location (a sorted gather: the order of those
# sums must be fixed).
PROBLEMS = {
    1: (deform_conv1d, Problem(N=3, C=4, O=6, size=(17,), kernel=(3,), stride=2, padding=1,
                               dilation=2, groups=2, offset_groups=2, offset_scale=4.0)),
    2: (deform_conv2d, Problem(N=3, C=4, O=6, size=(9, 8), kernel=(3, 3), stride=(2, 1),
                               padding=1, dilation=(1, 2), groups=2, offset_groups=2,
                               offset_scale=4.0)),
    3: (deform_conv3d, Problem(N=2, C=4, O=4, size=(4, 5, 4), kernel=(3, 3, 2),
                               padding=(1, 1, 0), groups=2, offset_groups=2,
                               offset_scale=0.7)),
}


def _run(fn, prob, t):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
    y = fn(**leaves, **prob.kwargs())
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
    return [y.detach()] + [v.grad for v in leaves.values()]


@pytest.mark.parametrize("R", [1, 2, 3], ids=["1d", "2d", "3d"])
def test_forward_backward_bitwise_repeatable(R):
    fn, prob = PROBLEMS[R]
    t = prob.tensors(torch.float32)
    first = _run(fn, prob, t)
    for _ in range(3):
        again = _run(fn, prob, t)
        for a, c in zip(first, again):
            assert torch.equal(a, c)
    assert all(v.abs().sum() > 0 for v in first)
