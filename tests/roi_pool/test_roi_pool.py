"""Deformable RoI pooling: mmcv's published values, the float64 oracle on regions of every kind,
the conventions' rules one by one, hostile values, bad arguments, gradcheck and registration."""

from __future__ import annotations

import functools

import pytest
import torch

from deformconv import deform_roi_pool
from deformconv.ops.roi_pool import torch_kernels as roi_pool_torch
from deformconv.ops.roi_pool.library import deform_roi_pool_op
from deformconv.ops.roi_pool.reference import deform_roi_pool_ref
from deformconv.testing import RoIProblem, assert_close

# mmcv's tests/test_ops/test_deform_roi_pool.py: (input, rois) -> (output, input gradient of a
# ones upstream gradient), output_size 2, spatial_scale 1, sampling_ratio 2, fresh
# DeformRoIPoolPack (its offsets start at zero).
MMCV_CASES = [
    ([[[[1., 2.], [3., 4.]]]], [[0., 0., 0., 1., 1.]],
     [[[[1., 1.25], [1.5, 1.75]]]],
     [[[[3.0625, 0.4375], [0.4375, 0.0625]]]]),
    ([[[[1., 2.], [3., 4.]], [[4., 3.], [2., 1.]]]], [[0., 0., 0., 1., 1.]],
     [[[[1., 1.25], [1.5, 1.75]], [[4., 3.75], [3.5, 3.25]]]],
     [[[[3.0625, 0.4375], [0.4375, 0.0625]], [[3.0625, 0.4375], [0.4375, 0.0625]]]]),
    ([[[[1., 2., 5., 6.], [3., 4., 7., 8.], [9., 10., 13., 14.], [11., 12., 15., 16.]]]],
     [[0., 0., 0., 3., 3.]],
     [[[[1.9375, 4.75], [7.5625, 10.375]]]],
     [[[[0.47265625, 0.4296875, 0.4296875, 0.04296875],
        [0.4296875, 0.390625, 0.390625, 0.0390625],
        [0.4296875, 0.390625, 0.390625, 0.0390625],
        [0.04296875, 0.0390625, 0.0390625, 0.00390625]]]]),
]


@pytest.mark.parametrize("case", range(len(MMCV_CASES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_mmcv_published_values(case, dtype):
    from deformconv import DeformRoIPoolPack
    x, rois, out, grad = MMCV_CASES[case]
    x = torch.tensor(x, dtype=dtype, requires_grad=True)
    rois = torch.tensor(rois, dtype=dtype)
    layer = DeformRoIPoolPack((2, 2), x.shape[1], spatial_scale=1.0,
                              sampling_ratio=2).to(dtype)
    y = layer(x, rois)
    y.backward(torch.ones_like(y))
    # These values are exact in every dtype (dyadic fractions).
    torch.testing.assert_close(y.double(), torch.tensor(out, dtype=torch.float64),
                               rtol=0, atol=0)
    torch.testing.assert_close(x.grad.double(), torch.tensor(grad, dtype=torch.float64),
                               rtol=0, atol=0)


@functools.lru_cache(maxsize=None)
def _oracle(p: RoIProblem, seed: int, dtype: torch.dtype):
    """The oracle on the inputs as rounded to ``dtype`` (read in float64)."""
    t = p.tensors(dtype, seed=seed)
    return deform_roi_pool_ref(t["input"], t["rois"], t["offset"], p.output_size,
                               p.spatial_scale, p.sampling_ratio, p.gamma, p.grad_out(dtype))


def _run(p: RoIProblem, dtype, seed, fn=deform_roi_pool, device="cpu"):
    t = p.tensors(dtype, device, seed=seed, requires_grad=True)
    y = fn(t["input"], t["rois"], t["offset"], **p.kwargs())
    leaves = [t["input"]] + ([t["offset"]] if t["offset"] is not None else [])
    grads = torch.autograd.grad(y, leaves, p.grad_out(dtype, device))
    assert y.device == t["input"].device and all(g.device == y.device for g in grads)
    return y, grads


def _check(p: RoIProblem, dtype, seed=0, fn=deform_roi_pool, device="cpu"):
    """``fn`` on ``device`` against the float64 oracle (on CPU), output and gradients."""
    y, grads = _run(p, dtype, seed, fn, device)
    out, gi, go = _oracle(p, seed, dtype)
    errs = [assert_close(y, out, dtype, "output"), assert_close(grads[0], gi, dtype, "input")]
    if go is not None and not go.any():
        # one-row or one-column maps: mmcv's offset rule gives 0 (the conventions' defect)
        assert not grads[1].any()
    elif go is not None:
        errs.append(assert_close(grads[1], go, dtype, "offset"))
    return errs


@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("gamma", [0.1, 0.5])
@pytest.mark.parametrize("offset", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_against_oracle_every_region_kind(sampling_ratio, gamma, offset, dtype, device):
    p = RoIProblem(sampling_ratio=sampling_ratio, gamma=gamma, offset=offset)
    _check(p, dtype, device=device)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_against_oracle(dtype, device):
    p = RoIProblem(R=21, output_size=(2, 3), spatial_scale=1.0, gamma=0.5)
    y, grads = _run(p, dtype, 0, device=device)
    assert y.dtype == dtype and grads[1].dtype == dtype
    _check(p, dtype, device=device)


@pytest.mark.parametrize("shape", [dict(H=1, W=5), dict(H=6, W=1), dict(H=1, W=1),
                                   dict(N=1, C=1, output_size=(1, 1)),
                                   dict(output_size=(7, 7), R=7, spatial_scale=1.0)])
def test_awkward_shapes(shape, device):
    _check(RoIProblem(**shape), torch.float64, seed=3, device=device)


def test_chunking_gives_the_same_numbers(monkeypatch):
    p = RoIProblem(R=21, C=5)
    y0, g0 = _run(p, torch.float64, 2)
    monkeypatch.setattr(roi_pool_torch, "CHUNK_ELEMENTS", 50)
    y1, g1 = _run(p, torch.float64, 2)
    assert_close(y1, y0)       # the summation order differs
    for a, b in zip(g1, g0):
        assert_close(a, b)


def test_gather_path_gives_the_same_numbers(monkeypatch):
    # devices without sparse kernels gather and index_add_ instead
    p = RoIProblem(R=14, C=5, gamma=0.5)
    y0, g0 = _run(p, torch.float64, 6)
    monkeypatch.setattr(roi_pool_torch, "SPARSE_DEVICES", ())
    y1, g1 = _run(p, torch.float64, 6)
    for a, b in zip((y1, *g1), (y0, *g0)):
        assert_close(a, b)


def _full_window(start, step, grid, size, eps):
    g = grid.expand_as(start)
    return torch.zeros_like(g), g.clone()


@pytest.mark.parametrize("sampling_ratio", [0, 7])
def test_sample_window_equals_full_grid(monkeypatch, sampling_ratio):
    # Regions much larger than the image (and mirrored ones): the closed-form window must hold
    # every in-range sample that the whole grid holds.
    p = RoIProblem(R=12, kinds=("large", "inverted", "partly_outside"), spatial_scale=0.125,
                   sampling_ratio=sampling_ratio, gamma=0.5, offset_scale=2.0)
    y0, g0 = _run(p, torch.float64, 4)
    monkeypatch.setattr(roi_pool_torch, "sample_window", _full_window)
    y1, g1 = _run(p, torch.float64, 4)
    assert_close(y0, y1, name="output")
    for a, b in zip(g0, g1):
        assert_close(a, b, name="grad")


def test_zero_regions():
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    rois = torch.zeros(0, 5)
    off = torch.zeros(0, 2, 7, 7, requires_grad=True)
    y = deform_roi_pool(x, rois, off, 7)
    assert y.shape == (0, 3, 7, 7)
    gx, go = torch.autograd.grad(y.sum(), [x, off])
    assert gx.shape == x.shape and not gx.any() and go.shape == off.shape
    # no channels
    y = deform_roi_pool(torch.randn(1, 0, 4, 4), torch.tensor([[0., 0, 0, 3, 3]]), None, 2)
    assert y.shape == (1, 0, 2, 2)


# --- the conventions, rule by rule ---------------------------------------------------------

def _pool_at(img, y, x):
    """One sample at (y, x) of a (H, W) image: a 1x1 bin with sampling_ratio 1 centred there."""
    H, W = img.shape
    c = torch.tensor([[0., x + 0.5 - 0.25, y + 0.5 - 0.25, x + 0.5 + 0.25, y + 0.5 + 0.25]],
                     dtype=torch.float64)
    return deform_roi_pool(img.view(1, 1, H, W), c, None, 1, sampling_ratio=1).item()


def test_border_rule_replicates_within_one_pixel_then_zero():
    img = torch.arange(1., 13., dtype=torch.float64).view(3, 4)
    assert _pool_at(img, 1.0, -1.0) == img[1, 0]            # x = -1 still samples
    assert _pool_at(img, 1.0, -0.5) == img[1, 0]            # replicated, not faded
    assert _pool_at(img, 1.0, -1.0 - 1e-9) == 0.0
    assert _pool_at(img, 3.0, 2.0) == img[2, 2]             # y = H still samples
    assert _pool_at(img, 3.0 + 1e-9, 2.0) == 0.0
    assert _pool_at(img, 1.5, 4.0) == (img[1, 3] + img[2, 3]) / 2
    assert _pool_at(img, 1.5, 4.0 + 1e-9) == 0.0
    assert _pool_at(img, 0.25, 0.5) == pytest.approx(0.75 * 1.5 + 0.25 * 5.5)


def test_offset_channel_zero_is_x_scaled_by_region_size():
    p = RoIProblem(R=6, kinds=("normal",), offset=False, spatial_scale=1.0)
    t = p.tensors()
    x, rois = t["input"], t["rois"]
    gamma, dx = 0.5, 0.3
    off = torch.zeros(6, 2, *p.output_size, dtype=torch.float64)
    off[:, 0] = dx
    shifted = rois.clone()
    w = rois[:, 3] - rois[:, 1]
    shifted[:, 1] += gamma * w * dx
    shifted[:, 3] += gamma * w * dx
    kw = dict(output_size=p.output_size, sampling_ratio=2)
    a = deform_roi_pool(x, rois, off, gamma=gamma, **kw)
    b = deform_roi_pool(x, shifted, None, gamma=gamma, **kw)
    assert_close(a, b)
    assert_close(deform_roi_pool(x, rois, torch.zeros_like(off), **kw),
                 deform_roi_pool(x, rois, None, **kw), tol=0)


def test_adaptive_grid_and_empty_regions():
    # A ramp image: the average of samples on a line is the value at their mean position.
    H, W = 6, 40
    img = torch.arange(W, dtype=torch.float64).expand(1, 1, H, W).contiguous()
    # width 22 over 4 bins: 5.5 -> ceil 6 samples per bin; mean x of a bin is its centre
    r = torch.tensor([[0., 2.0, 1.0, 24.0, 4.0]], dtype=torch.float64)
    y = deform_roi_pool(img, r, None, (1, 4))
    centres = 1.5 + 5.5 * torch.arange(4, dtype=torch.float64) + 2.75
    assert_close(y.view(4), centres)
    # zero-width region: no samples with the adaptive grid, samples on the line with a ratio
    r0 = torch.tensor([[0., 5.0, 1.0, 5.0, 4.0]], dtype=torch.float64)
    assert not deform_roi_pool(img, r0, None, 2).any()
    assert_close(deform_roi_pool(img, r0, None, 2, sampling_ratio=2), torch.full(
        (1, 1, 2, 2), 4.5, dtype=torch.float64), tol=1e-15)


def test_batch_index_is_truncated():
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64)
    r = torch.tensor([[1.7, 0, 0, 4, 4], [-0.5, 0, 0, 4, 4], [0.0, 0, 0, 4, 4],
                      [1.0, 0, 0, 4, 4]], dtype=torch.float64)
    y = deform_roi_pool(x, r, None, 2)
    torch.testing.assert_close(y[0], y[3], rtol=0, atol=0)
    torch.testing.assert_close(y[1], y[2], rtol=0, atol=0)
    assert not torch.equal(y[0], y[2])


def test_offset_gradient_is_mmcv_rule_in_edge_bands():
    img = torch.randn(1, 1, 4, 5, dtype=torch.float64)
    off = torch.zeros(1, 2, 1, 1, dtype=torch.float64, requires_grad=True)

    def grads(roi):
        r = torch.tensor([roi], dtype=torch.float64)
        y = deform_roi_pool(img, r, off, 1, sampling_ratio=2)
        (g,) = torch.autograd.grad(y.sum(), off)
        _, _, want = deform_roi_pool_ref(img, r, off, (1, 1), 1.0, 2, 0.1,
                                         torch.ones(1, 1, 1, 1))
        return g, want

    # samples with y in (3.1, 3.7) = [H-1, H]: both offset gradients are 0 (the forward
    # still varies with x there)
    g, want = grads([0., 0.7, 3.6, 3.1, 4.2])
    assert not g.any() and not want.any()
    # samples with y in [-1, 0): the forward is flat in y, mmcv's y-gradient is not 0
    g, want = grads([0., 0.7, -0.4, 3.1, 0.3])
    assert g[0, 1].abs().item() > 1e-3
    assert_close(g, want)


# --- hostile values ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hostile_regions_and_offsets(dtype):
    x = torch.randn(2, 3, 6, 7, dtype=dtype, requires_grad=True)
    big = 1e30 if dtype == torch.float64 else 1e30
    inf, nan = float("inf"), float("nan")
    r = torch.tensor([[0, nan, 0, 4, 4], [0, 0, 0, inf, 4], [1, -inf, -inf, inf, inf],
                      [1, -big, -big, big, big], [0, 0, 0, big, 3], [0, 1, 1, 5, 5],
                      [1, 1, 1, 5, 5], [0, 1, 1, 5, 5]], dtype=dtype)
    off = torch.zeros(8, 2, 2, 2, dtype=dtype)
    off[5, 0, 0, 0] = nan
    off[6, 1, 1, 1] = inf
    off[7] = big
    off.requires_grad_()
    for sr in (0, 2):
        y = deform_roi_pool(x, r, off, 2, sampling_ratio=sr)
        assert torch.isfinite(y).all()
        assert not y[:3].any()                               # non-finite regions: 0
        assert not y[5, :, 0, 0].any() and not y[6, :, 1, 1].any() and not y[7].any()
        assert y[5, :, 1, 1].any()                           # the other bins still pool
        gx, go = torch.autograd.grad(y.sum(), [x, off])
        assert torch.isfinite(gx).all() and torch.isfinite(go).all()
        assert not go[5, :, 0, 0].any() and not go[7].any()
        # 1e30-wide regions: finite (their positions are rounded to multiples of ~1e22, a few
        # may round into the image). Only the samples that can be inside are visited, so this
        # is fast; the window equals the full grid on regions 8x the image
        # (test_sample_window_equals_full_grid).


# --- arguments ------------------------------------------------------------------------------

def _args(**kw):
    a = dict(input=torch.randn(2, 3, 5, 5), rois=torch.tensor([[0., 0, 0, 3, 3]]),
             offset=torch.zeros(1, 2, 2, 2), output_size=2)
    a.update(kw)
    return a


@pytest.mark.parametrize("kw, err, msg", [
    (dict(input=torch.randn(3, 5, 5)), ValueError, r"input must be 4-D, got shape \(3, 5, 5\)"),
    (dict(input=torch.randn(1, 3, 5, 5).int()), TypeError, "input must be float16"),
    (dict(input=[1.0]), TypeError, "input must be a Tensor, got list"),
    (dict(rois=torch.zeros(1, 4)), ValueError, r"rois must have shape \(R, 5\).*got \(1, 4\)"),
    (dict(rois=torch.zeros(5)), ValueError, "rois must be 2-D"),
    (dict(rois=torch.zeros(1, 5, dtype=torch.float64)), TypeError,
     r"rois must have the input's dtype torch.float32 \(or float32 with float16/bfloat16 "
     r"input\), got torch.float64"),
    (dict(offset=torch.zeros(1, 2, 3, 2)), ValueError,
     r"offset must have shape \(R, 2, ph, pw\) = \(1, 2, 2, 2\), got \(1, 2, 3, 2\)"),
    (dict(offset=torch.zeros(2, 2, 2, 2)), ValueError, "offset must have shape"),
    (dict(offset=torch.zeros(1, 2, 2, 2, dtype=torch.float16)), TypeError,
     "offset must have the input's dtype"),
    (dict(rois=torch.tensor([[2., 0, 0, 3, 3]])), ValueError,
     r"rois\[:, 0\] \(batch index\) must lie in \[0, N\) = \[0, 2\).*got 2.0 in row 0"),
    (dict(rois=torch.tensor([[0., 0, 0, 3, 3], [-1., 0, 0, 3, 3]]),
          offset=None), ValueError, "got -1.0 in row 1"),
    (dict(rois=torch.tensor([[float("nan"), 0, 0, 3, 3]])), ValueError, "batch index"),
    (dict(output_size=0), ValueError, "output_size must be >= 1, got 0"),
    (dict(output_size=(2, 2, 2)), TypeError, "output_size must be an int or a pair of ints"),
    (dict(output_size=2.0), TypeError, "output_size must be an int or a pair"),
    (dict(spatial_scale="1"), TypeError, "spatial_scale must be a real number"),
    (dict(spatial_scale=float("nan")), ValueError, "spatial_scale must be finite"),
    (dict(gamma=None), TypeError, "gamma must be a real number"),
    (dict(sampling_ratio=1.5), TypeError, "sampling_ratio must be an int, got 1.5"),
    (dict(input=torch.randn(1, 3, 0, 5), rois=torch.zeros(0, 5), offset=None), ValueError,
     "input height and width must be >= 1, got 0x5"),
])
def test_bad_arguments(kw, err, msg):
    with pytest.raises(err, match=msg):
        deform_roi_pool(**_args(**kw))


def test_numpy_ints_and_pairs():
    np = pytest.importorskip("numpy")
    a = _args(offset=None)
    y1 = deform_roi_pool(a["input"], a["rois"], None, (np.int64(2), 3),
                         sampling_ratio=np.int32(2))
    y2 = deform_roi_pool(a["input"], a["rois"], None, [2, 3], sampling_ratio=2)
    assert y1.shape == (1, 3, 2, 3)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)


def test_device_mismatch_message():
    if not torch.cuda.is_available():
        dev = torch.device("meta")
    else:
        dev = torch.device("cuda")
    with pytest.raises(ValueError, match="rois must be on the input's device"):
        deform_roi_pool(torch.randn(1, 1, 4, 4), torch.zeros(1, 5, device=dev), None, 2)


def test_non_contiguous_inputs():
    p = RoIProblem(R=7)
    t = p.tensors()
    x = t["input"].transpose(2, 3).contiguous().transpose(2, 3)
    off = t["offset"].transpose(2, 3).contiguous().transpose(2, 3)
    rois = torch.empty(7, 10, dtype=torch.float64)[:, ::2].copy_(t["rois"])
    assert not (x.is_contiguous() or off.is_contiguous() or rois.is_contiguous())
    a = deform_roi_pool(x, rois, off, **p.kwargs())
    b = deform_roi_pool(t["input"], t["rois"], t["offset"], **p.kwargs())
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- autograd and registration -------------------------------------------------------------

def _interior_problem():
    """Every sample well inside [0, H-1) x [0, W-1): mmcv's offset rule is the derivative."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64, generator=g)
    rois = torch.tensor([[0, 3.0, 3.0, 8.0, 7.5], [1, 2.6, 3.1, 6.9, 6.2],
                         [1, 4.1, 2.9, 5.3, 4.0]], dtype=torch.float64)
    off = 0.2 * torch.randn(3, 2, 2, 3, dtype=torch.float64, generator=g)
    return x, rois, off


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gradcheck(sampling_ratio):
    x, rois, off = _interior_problem()
    x.requires_grad_()
    off.requires_grad_()
    def f(x, off):
        return deform_roi_pool(x, rois, off, (2, 3), 1.0, sampling_ratio, 0.5)

    assert torch.autograd.gradcheck(f, (x, off), fast_mode=True)
    # anywhere (regions of every kind): the input gradient is exact
    p = RoIProblem(N=2, C=1, H=5, W=6, R=14, sampling_ratio=sampling_ratio)
    t = p.tensors(requires_grad=True)
    def g(x):
        return deform_roi_pool(x, t["rois"], t["offset"].detach(), **p.kwargs())

    assert torch.autograd.gradcheck(g, (t["input"],), fast_mode=True)


def test_rois_get_no_gradient_and_double_backward_errors():
    x, rois, off = _interior_problem()
    x.requires_grad_()
    rois.requires_grad_()
    y = deform_roi_pool(x, rois, off, (2, 3))
    (gr,) = torch.autograd.grad(y.sum(), rois, allow_unused=True)
    assert gr is None
    (gx,) = torch.autograd.grad(deform_roi_pool(x, rois.detach(), off, (2, 3)).sum(), x,
                                create_graph=True)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        gx.sum().backward()


def test_opcheck():
    x, rois, off = _interior_problem()
    for o in (off, None):
        args = (x.requires_grad_(), rois, None if o is None else o.clone().requires_grad_(),
                2, 3, 1.0, 0, 0.1)
        torch.library.opcheck(deform_roi_pool_op, args)


def test_autocast_runs_in_float32():
    x = torch.randn(1, 2, 6, 6)
    rois = torch.tensor([[0., 0.5, 0.5, 4.5, 5.0]])
    off = torch.randn(1, 2, 2, 2).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = deform_roi_pool(x, rois, off, 2)
    assert y.dtype == torch.float32
    assert_close(y, deform_roi_pool(x, rois, off.float(), 2))


@pytest.mark.slow
def test_compile_fullgraph():
    p = RoIProblem(R=7)
    f = torch.compile(deform_roi_pool, fullgraph=True, dynamic=False)
    y, g = _run(p, torch.float64, 0, fn=f)
    y0, g0 = _run(p, torch.float64, 0)
    assert_close(y, y0)
    for a, b in zip(g, g0):
        assert_close(a, b)


@pytest.mark.slow
def test_export_one_node():
    from deformconv import DeformRoIPool
    p = RoIProblem(R=5)
    t = p.tensors()
    m = DeformRoIPool(p.output_size, p.spatial_scale, 2)
    ep = torch.export.export(m, (t["input"], t["rois"], t["offset"]))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets == [torch.ops.deformconv.deform_roi_pool.default], targets
    assert_close(ep.module()(t["input"], t["rois"], t["offset"]),
                 m(t["input"], t["rois"], t["offset"]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_raises_clear_error(tmp_path):
    from deformconv import DeformRoIPool
    m = DeformRoIPool(2, 1.0, 2)
    args = (torch.randn(1, 2, 5, 5), torch.tensor([[0., 0, 0, 3, 3]]))
    with pytest.raises(RuntimeError, match="cannot be exported to ONNX"):
        torch.onnx.export(m, args, str(tmp_path / "m.onnx"), dynamo=False)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_onnx_dynamo_export_fails_naming_the_op(tmp_path):
    pytest.importorskip("onnxscript")
    from deformconv import DeformRoIPool
    m = DeformRoIPool(2, 1.0, 2)
    args = (torch.randn(1, 2, 5, 5), torch.tensor([[0., 0, 0, 3, 3]]))
    with pytest.raises(Exception) as e:
        torch.onnx.export(m, args, str(tmp_path / "m.onnx"), dynamo=True)
    chain, c = [], e.value
    while c is not None:
        chain.append(str(c))
        c = c.__cause__ or c.__context__
    assert any("deform_roi_pool" in s for s in chain)
    assert not (tmp_path / "m.onnx").exists()


def test_chunks_bound_the_tiles_at_detector_sizes():
    # 1000 regions x 256 channels x 7x7: every chunk's (samples, channels) tile stays bounded
    g = torch.Generator().manual_seed(0)
    size = 16 + 300 * torch.rand(1000, 2, generator=g)
    ctr = torch.rand(1000, 2, generator=g) * torch.tensor([1344.0, 800.0])
    rois = torch.cat([torch.zeros(1000, 1), ctr - size / 2, ctr + size / 2], 1)
    geo = roi_pool_torch.Geometry(rois, None, 1, 50, 84, 7, 7, 1 / 16, 0, 0.1, torch.float32)
    chunks = geo.chunks(256)
    assert chunks[0][0] == 0 and chunks[-1][1] == 1000 and len(chunks) > 1
    for (a, e, ty, tx), nxt in zip(chunks, chunks[1:] + [(1000,)]):
        assert e == nxt[0]
        assert e - a == 1 or (e - a) * ty * tx * 49 * 256 <= roi_pool_torch.CHUNK_ELEMENTS


def test_triton_failure_falls_back_once_with_a_warning(broken_triton):
    # The central dispatch, on CPU tensors with the Triton backend forced: a failing launcher
    # warns once and hands this call and later ones to the pure-PyTorch kernels.
    broken_triton("deform_roi_pool_fwd", "no compiler")
    x, rois, off = _interior_problem()
    args = (x, rois, off, 2, 3, 1.0, 0, 0.1)
    with pytest.warns(RuntimeWarning, match="Triton deform_roi_pool forward kernel failed.*no "
                                            "compiler"):
        y = deform_roi_pool(x, rois, off, (2, 3), 1.0, 0, 0.1)
    assert_close(y, roi_pool_torch.deform_roi_pool_fwd(*args), tol=0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deform_roi_pool(x, rois, off, (2, 3), 1.0, 0, 0.1)   # no second warning


def test_meta_tensors_give_the_shape():
    """Shapes only: the value checks (batch index) need real tensors and are skipped."""
    y = deform_roi_pool(torch.empty(2, 4, 10, 12, device="meta"),
                        torch.empty(3, 5, device="meta"), None, 7)
    assert y.device.type == "meta" and y.shape == (3, 4, 7, 7) and y.dtype == torch.float32
    y = deform_roi_pool(torch.empty(2, 4, 10, 12, device="meta"),
                        torch.empty(3, 5, device="meta"),
                        torch.empty(3, 2, 2, 3, device="meta"), (2, 3))
    assert y.shape == (3, 4, 2, 3)
    with pytest.raises(ValueError, match="offset must have shape"):  # shape checks still run
        deform_roi_pool(torch.empty(2, 4, 10, 12, device="meta"),
                        torch.empty(3, 5, device="meta"), torch.empty(3, 2, 7, 6,
                                                                      device="meta"), 7)


def test_fake_tensors_and_make_fx_trace():
    """Under FakeTensorMode (shape propagation) and a fake-mode make_fx trace, the value
    checks do not read values, so tracing goes through; eager still checks."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    with FakeTensorMode():
        y = deform_roi_pool(torch.empty(2, 4, 10, 12), torch.zeros(3, 5), None, 7)
    assert y.shape == (3, 4, 7, 7)

    def f(x, rois):
        return deform_roi_pool(x, rois, None, 2, sampling_ratio=2)
    a = _args()
    g = make_fx(f, tracing_mode="fake")(a["input"], a["rois"])
    assert any("deform_roi_pool" in str(n.target) for n in g.graph.nodes)
    torch.testing.assert_close(g(a["input"], a["rois"]), f(a["input"], a["rois"]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_rois_with_low_precision_features(dtype):
    """float32 rois are accepted with float16/bfloat16 features, and the positions come from
    the float32 coordinates: the result equals pooling the same (rounded) features in float32,
    while rounding the coordinates to the low dtype moves the samples."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 40, 40, generator=g).to(dtype)
    rois = torch.tensor([[0., 1.3, 2.7, 33.1, 30.9], [1., 5.05, 3.3, 37.7, 21.6]])
    off = (0.1 * torch.randn(2, 2, 3, 3, generator=g)).to(dtype)
    got = deform_roi_pool(x, rois, off, 3, sampling_ratio=2)
    assert got.dtype == dtype
    want = deform_roi_pool(x.float(), rois, off.float(), 3, sampling_ratio=2)
    torch.testing.assert_close(got.float(), want.to(dtype).float(), rtol=0, atol=0)
    rounded = deform_roi_pool(x, rois.to(dtype), off, 3, sampling_ratio=2)
    assert (rounded.float() - want).abs().max() > (got.float() - want).abs().max()
    with pytest.raises(TypeError, match="rois must have the input's dtype torch.float32 "
                                        r"\(or float32 with float16/bfloat16 input\)"):
        deform_roi_pool(x.float(), rois.double(), None, 3)


@pytest.mark.parametrize("bad", [0.0, -0.25])
def test_spatial_scale_must_be_positive(bad):
    with pytest.raises(ValueError, match=f"spatial_scale must be > 0, got {bad}"):
        deform_roi_pool(**_args(spatial_scale=bad))

