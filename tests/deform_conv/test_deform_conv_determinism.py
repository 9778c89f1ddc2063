"""On CPU, forward and backward are bitwise repeatable run to run."""

import torch

from deformconv import deform_conv2d


def _run(x, off, mask, w, b):
    leaves = [t.detach().clone().requires_grad_() for t in (x, off, mask, w, b)]
    y = deform_conv2d(leaves[0], leaves[1], leaves[3], leaves[4], stride=(2, 1), padding=1,
                      dilation=(1, 2), mask=leaves[2])
    grad = torch.linspace(-1, 1, y.numel()).view_as(y)
    y.backward(grad)
    return [y.detach()] + [t.grad for t in leaves]


def test_forward_backward_bitwise_repeatable():
    gen = torch.Generator().manual_seed(0)
    # offset groups 2, conv groups 2, offsets that pile many samples on the same pixels, so the
    # input gradient sums many contributions to each location (a sorted gather: the order of
    # those sums must be fixed).
    x = torch.randn(3, 4, 9, 8, generator=gen)
    off = 4 * torch.randn(3, 2 * 2 * 9, 5, 6, generator=gen)
    mask = torch.rand(3, 2 * 9, 5, 6, generator=gen)
    w = torch.randn(6, 2, 3, 3, generator=gen)
    b = torch.randn(6, generator=gen)
    first = _run(x, off, mask, w, b)
    for _ in range(3):
        again = _run(x, off, mask, w, b)
        for a, c in zip(first, again):
            assert torch.equal(a, c)
    assert all(t.abs().sum() > 0 for t in first)
