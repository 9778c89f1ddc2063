"""Mixed precision: the autocast rules (see ``deformconv/ops/autocast.py``): float32 on CPU;
on CUDA data in the autocast dtype, offsets and mask in float32 (kernels: tests/triton)."""

import pytest
import torch

import deformconv
from deformconv import ModulatedDeformConv2dPack, deform_conv2d
from deformconv.ops.deform_conv.reference import deform_conv_ref
from deformconv.testing import assert_close

BF16 = torch.bfloat16


def _args(gen, dtype=torch.float32):
    x = torch.randn(2, 4, 7, 6, generator=gen, dtype=dtype)
    off = 2 * torch.randn(2, 2 * 2 * 9, 5, 4, generator=gen, dtype=dtype)
    mask = torch.rand(2, 2 * 9, 5, 4, generator=gen, dtype=dtype)
    w = torch.randn(6, 4, 3, 3, generator=gen, dtype=dtype)
    b = torch.randn(6, generator=gen, dtype=dtype)
    return x, off, mask, w, b


def test_op_runs_in_float32_under_cpu_autocast():
    """Mixed bfloat16/float32 arguments are cast to float32: the result is exactly the float32
    op on the same (bfloat16-rounded) values, and matches the float64 oracle."""
    x, off, mask, w, b = _args(torch.Generator().manual_seed(0))
    off16, mask16 = off.to(BF16), mask.to(BF16)
    with torch.autocast("cpu", dtype=BF16):
        y = deform_conv2d(x, off16, w, b, mask=mask16)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, deform_conv2d(x, off16.float(), w, b, mask=mask16.float()),
                               rtol=0, atol=0)
    ref = deform_conv_ref(x.double(), off16.double(), w.double(), b.double(),
                            mask=mask16.double())
    assert_close(y, ref, name="output")  # float32's tolerance of deformconv.testing


def test_mismatched_dtypes_outside_autocast_still_raise():
    x, off, mask, w, b = _args(torch.Generator().manual_seed(1))
    with pytest.raises(TypeError, match="offset must have the input's dtype"):
        deform_conv2d(x, off.to(BF16), w, b, mask=mask)
    with torch.autocast("cpu", dtype=BF16), pytest.raises(TypeError, match="weight"):
        deform_conv2d(x, off, w.double(), b, mask=mask)  # float64 is never mixed in


def test_float64_untouched_under_autocast():
    x, off, mask, w, b = _args(torch.Generator().manual_seed(2), torch.float64)
    with torch.autocast("cpu", dtype=BF16):
        y = deform_conv2d(x, off, w, b, mask=mask)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, deform_conv2d(x, off, w, b, mask=mask), rtol=0, atol=0)


def test_model_forward_backward_close_to_float32():
    """A model with float32 parameters under CPU bfloat16 autocast: finite outputs and
    gradients within bfloat16-level tolerances of the float32 run. The differences come from
    the ordinary convolutions that autocast runs in bfloat16 (the input conv and conv_offset)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                ModulatedDeformConv2dPack(8, 8, 3, padding=1, offset_groups=2))
    torch.nn.init.normal_(model[2].conv_offset.weight, std=0.1)
    x = torch.randn(2, 3, 9, 9)
    y32 = model(x)
    y32.square().mean().backward()
    g32 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.autocast("cpu", dtype=BF16):
        y = model(x)
        loss = y.float().square().mean()
    loss.backward()
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert (y - y32).abs().max() <= 3e-2 * y32.abs().max()
    for (name, p), g in zip(model.named_parameters(), g32):
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
        assert (p.grad - g).norm() <= 0.15 * g.norm(), name


def test_rule_registered_for_cpu_and_cuda():
    op = torch.ops.deformconv.deform_conv2d.default
    for key in ("AutocastCPU", "AutocastCUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), key), key


@pytest.mark.parametrize("dtype", [torch.float16, BF16])
def test_cuda_rule_casts_data_to_autocast_dtype_and_positions_to_float32(dtype):
    x, off, mask, w, b = _args(torch.Generator().manual_seed(3))
    cast = deformconv.ops.autocast.cuda_cast(x, w, off.to(BF16), mask.half(), b, dtype)
    assert [t.dtype for t in cast] == [dtype, dtype, torch.float32, torch.float32, dtype]
    assert torch.equal(cast[2], off.to(BF16).float())  # no detour through the data dtype
    kept = deformconv.ops.autocast.cuda_cast(x.double(), w.double(), off.double(),
                                             mask.double(), None, dtype)
    assert [t.dtype for t in kept[:4]] == [torch.float64] * 4 and kept[4] is None


def test_mixed_dtypes_on_the_pure_pytorch_path():
    """What the CUDA rule hands the kernels, run by the pure-PyTorch path (the fallback):
    computed in float32, output in the data dtype, gradients in each argument's dtype."""
    from deformconv.ops.deform_conv import torch_kernels

    x, off, mask, w, b = _args(torch.Generator().manual_seed(4))
    xb, wb, bb = x.to(BF16), w.to(BF16), b.to(BF16)
    params = ([1, 1], [0, 0], [1, 1])
    y = torch_kernels.deform_conv_fwd(xb, wb, off, mask, bb, *params)
    assert y.dtype == BF16
    ref = deform_conv_ref(xb.double(), off.double(), wb.double(), bb.double(), mask=mask.double())
    assert_close(y, ref, BF16, "output")
    go = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(BF16)
    grads = torch_kernels.deform_conv_bwd(go, xb, wb, off, mask, bb, *params,
                                          [True, True, True, True])
    assert [g.dtype for g in grads] == [BF16, BF16, torch.float32, torch.float32, BF16]
