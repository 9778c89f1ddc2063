"""The registered op called directly validates its arguments; torch.func's autodiff transforms
raise a clear error (they are not supported), vmap keeps working."""

import warnings

import pytest
import torch

import deformconv

OP = torch.ops.deformconv.deform_conv2d


def _args(**change):
    a = dict(input=torch.randn(1, 4, 8, 8), weight=torch.randn(6, 4, 3, 3),
             offset=torch.zeros(1, 18, 6, 6), mask=None, bias=None, stride_h=1, stride_w=1,
             pad_h=0, pad_w=0, dil_h=1, dil_w=1)
    a.update(change)
    return list(a.values())


def test_raw_op_with_good_arguments_matches_the_function():
    args = _args()
    torch.testing.assert_close(OP(*args), deformconv.deform_conv2d(args[0], args[2], args[1]))


@pytest.mark.parametrize("change,exc,pattern", [
    (dict(stride_h=0), ValueError, r"stride must be >= 1"),
    (dict(dil_w=0), ValueError, r"dilation must be >= 1"),
    (dict(pad_h=-1), ValueError, r"padding must be >= 0"),
    (dict(offset=torch.zeros(1, 17, 6, 6)), ValueError, r"offset channels"),
    (dict(weight=torch.randn(6, 3, 3, 3)), ValueError, r"input channels \(4\) must be a multiple"),
    (dict(offset=torch.zeros(1, 18, 5, 6)), ValueError, r"offset spatial size"),
    (dict(mask=torch.ones(1, 8, 6, 6)), ValueError, r"mask channels"),
    (dict(input=torch.randn(4, 8, 8)), ValueError, r"input must be 4-D"),
])
def test_raw_op_rejects_bad_arguments_clearly(change, exc, pattern):
    with pytest.raises(exc, match=pattern):
        OP(*_args(**change))


def test_raw_op_bad_arguments_under_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                for a in _args(stride_w=0)]
        with pytest.raises(ValueError, match=r"stride must be >= 1"):
            OP(*args)


def test_torch_func_grad_is_a_clear_error():
    x, w, off = torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.zeros(1, 18, 6, 6)
    with pytest.raises(RuntimeError, match=r"torch\.func.*not supported.*torch\.autograd"):
        torch.func.grad(lambda x: deformconv.deform_conv2d(x, off, w).sum())(x)
    layer = deformconv.ModulatedDeformConv2dPack(4, 6, 3)
    params = dict(layer.named_parameters())
    with pytest.raises(RuntimeError, match=r"torch\.func"):
        torch.func.grad(lambda p: torch.func.functional_call(layer, p, (x,)).sum())(params)


def test_vmap_still_runs():
    x, w, off = torch.randn(3, 1, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.zeros(3, 1, 18, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's slow-fallback warning
        y = torch.func.vmap(lambda a, o: deformconv.deform_conv2d(a, o, w))(x, off)
    torch.testing.assert_close(y[1], deformconv.deform_conv2d(x[1], off[1], w))
