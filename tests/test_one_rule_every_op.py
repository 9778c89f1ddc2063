"""Rules that once differed between the 2-D and the 1-D/3-D operators (and RoI pooling) hold the
same for every op: the TF32 rule, argument checks of the raw ops, the torch.func guard, the
autocast rule, and one failure record of the dispatch."""

import pytest
import torch

import deformconv
from deformconv.ops.deform_conv import torch_kernels

R_ALL = [1, 2, 3]
SIZE = {1: (9,), 2: (7, 8), 3: (5, 6, 4)}


def _problem(R, requires_grad=False):
    out = [s - 2 for s in SIZE[R]]
    x = torch.randn(2, 4, *SIZE[R], dtype=torch.float64, requires_grad=requires_grad)
    off = torch.randn(2, R * 3 ** R, *out, dtype=torch.float64, requires_grad=requires_grad)
    w = torch.randn(5, 4, *(3,) * R, dtype=torch.float64, requires_grad=requires_grad)
    return x, off, w


def _raw_args(R, stride=1, x=None, off=None, w=None):
    x0, off0, w0 = _problem(R)
    x, off, w = (x if x is not None else x0), (off if off is not None else off0), \
        (w if w is not None else w0)
    if R == 2:
        return [x, w, off, None, None, stride, stride, 0, 0, 1, 1]
    return [x, w, off, None, None, [stride] * R, [0] * R, [1] * R]


def test_tf32_follows_cudnn_for_every_launcher():
    """float32 dots use TF32 exactly when torch.backends.cudnn.allow_tf32 is on (what
    nn.Conv1d/2d/3d follow), never by the matmul flag."""
    pytest.importorskip("triton")
    from deformconv.ops.deform_conv.triton import launch_nd
    from deformconv.ops.triton import spec

    x, off, w = (t.float() for t in _problem(3))
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for cudnn, matmul in ((False, True), (True, False)):
            torch.backends.cudnn.allow_tf32 = cudnn
            torch.backends.cuda.matmul.allow_tf32 = matmul
            want = "tf32" if cudnn else "ieee"
            assert spec.input_precision(torch.float32) == want
            consts = launch_nd._setup(x, w, off, [1] * 3, [0] * 3, [1] * 3)[-1]
            assert consts["INPUT_PRECISION"] == want
            assert spec.input_precision(torch.float16) == "ieee"
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("R", R_ALL)
def test_raw_ops_check_their_arguments(R):
    op = getattr(torch.ops.deformconv, f"deform_conv{R}d")
    with pytest.raises(ValueError, match="stride must be >= 1"):
        op(*_raw_args(R, stride=0))
    x, off, w = _problem(R)
    with pytest.raises(ValueError, match="offset channels"):
        op(*_raw_args(R, off=off[:, 1:]))
    with pytest.raises(ValueError, match=f"input must be {R + 2}-D"):
        op(*_raw_args(R, x=x[0]))


def test_raw_roi_pool_op_checks_its_arguments():
    op = torch.ops.deformconv.deform_roi_pool
    x, rois = torch.randn(1, 3, 8, 8), torch.tensor([[0.0, 1, 1, 5, 5]])
    with pytest.raises(ValueError, match="rois"):
        op(x, rois[:, :4], None, 2, 2, 1.0, 0, 0.1)
    with pytest.raises(ValueError, match="output_size"):
        op(x, rois, None, 0, 2, 1.0, 0, 0.1)


@pytest.mark.parametrize("R", R_ALL)
def test_torch_func_autodiff_is_a_clear_error_for_every_op(R):
    x, off, w = _problem(R)
    fn = getattr(deformconv, f"deform_conv{R}d")
    with pytest.raises(RuntimeError, match=f"deform_conv{R}d: torch.func autodiff"):
        torch.func.grad(lambda a: fn(a, off, w).sum())(x)


def test_torch_func_autodiff_is_a_clear_error_for_roi_pooling():
    x, rois = torch.randn(1, 3, 8, 8), torch.tensor([[0.0, 1, 1, 5, 5]])
    with pytest.raises(RuntimeError, match="deform_roi_pool: torch.func autodiff"):
        torch.func.grad(lambda a: deformconv.deform_roi_pool(a, rois, None, 2).sum())(x)


@pytest.mark.parametrize("R", R_ALL)
def test_one_autocast_rule_for_every_dimensionality(R):
    """CUDA: the mixed rule of ops/autocast.py (data in the autocast dtype, offsets and mask in
    float32) is the registered AutocastCUDA kernel of every op; CPU: float32."""
    table = torch._C._dispatch_dump_table(f"deformconv::deform_conv{R}d")
    line = next(ln for ln in table.splitlines() if ln.startswith("AutocastCUDA:"))
    assert "autocast.py" in line
    x, off, w = (t.float() for t in _problem(R))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = getattr(deformconv, f"deform_conv{R}d")(x.bfloat16(), off, w.bfloat16())
    assert y.dtype == torch.float32


@pytest.mark.parametrize("R", R_ALL)
def test_one_failure_record_format(R, broken_triton):
    """A failing Triton launcher is recorded as "<op> <direction>" for every op."""
    dispatch = broken_triton("deform_conv_fwd", "ptxas died")
    x, off, w = (t.float() for t in _problem(R))
    with pytest.warns(RuntimeWarning, match=f"Triton deform_conv{R}d forward kernel failed"):
        y = getattr(deformconv, f"deform_conv{R}d")(x, off, w)
    assert list(dispatch._failed) == [f"deform_conv{R}d forward"]
    params = ([1] * R, [0] * R, [1] * R)
    assert torch.equal(y, torch_kernels.deform_conv_fwd(x, w, off, None, None, *params))
