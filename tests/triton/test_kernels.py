"""Triton launchers against the float64 oracle: forward and all five gradients, every dtype,
hostile offsets, both index widths, the CUDA autocast dtypes. Outputs are NaN-filled first
(``conftest.nan_fill``), so an unwritten tile fails."""

from __future__ import annotations

import pytest
import torch

from deformconv.ops.deform_conv.reference import deform_conv_ref
from deformconv.testing import Problem, assert_close

pytest.importorskip("triton")
from deformconv.ops.deform_conv.triton import launch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRADS = ("input", "weight", "offset", "mask", "bias")
LAUNCH_ORDER = ("input", "weight", "offset", "mask", "bias")


def _params(p: Problem):
    return p.strides, p.paddings, p.dilations


def _oracle(p: Problem, t, grad_out):
    d = {n: (v.detach().cpu().double().requires_grad_() if v is not None else None)
         for n, v in t.items()}
    out = deform_conv_ref(d["input"], d["offset"], d["weight"], d["bias"], p.strides,
                            p.paddings, p.dilations, d["mask"])
    names = [n for n in GRADS if d[n] is not None]
    grads = torch.autograd.grad(out, [d[n] for n in names], grad_out.cpu().double())
    return out.detach(), dict(zip(names, grads))


def _run(p: Problem, t, output_mask=(True, True, True, True), grad_dtype=None):
    args = [t[n] for n in LAUNCH_ORDER]
    out = launch.deform_conv_fwd(*args, *_params(p))
    grad_out = p.grad_out(grad_dtype or out.dtype, DEVICE)
    grads = launch.deform_conv_bwd(grad_out, *args, *_params(p), list(output_mask))
    # Strides must match the registered fake implementation's (contiguous), or compile breaks.
    assert out.is_contiguous() and all(g.is_contiguous() for g in grads)
    return out, grad_out, dict(zip(GRADS, grads))


def _check_all(p: Problem, t, dtype, **run):
    out, grad_out, grads = _run(p, t, **run)
    ref, ref_grads = _oracle(p, t, grad_out)
    errors = {"output": assert_close(out, ref, dtype, "output")}
    for n, r in ref_grads.items():
        assert grads[n].dtype == t[n].dtype, n
        errors[n] = assert_close(grads[n], r, dtype, n)
    return errors


CASES = {
    "groups_and_offset_groups_straddle": Problem(N=2, C=6, O=4, size=(4, 5), groups=2,
                                                 offset_groups=3),
    "strided_dilated_no_mask": Problem(N=1, C=8, O=5, size=(7, 6), kernel=(3, 2),
                                       stride=(2, 1), padding=(2, 1), dilation=(2, 1),
                                       mask=False),
    "one_pixel_image": Problem(N=2, C=3, O=2, size=(1, 1)),
    "offset_groups_no_bias": Problem(N=1, C=8, O=6, size=(4, 5), kernel=(2, 3), stride=(1, 2),
                                     padding=(0, 1), groups=2, offset_groups=4, bias=False),
    "one_tap_no_split": Problem(N=2, C=5, O=3, size=(5, 4), kernel=(1, 1), padding=0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_float32_forward_and_grads(name, blocks):
    p = CASES[name]
    if name == "strided_dilated_no_mask":  # several channel and output-channel blocks
        blocks(BLOCK_M=8, BLOCK_N=4, BLOCK_O=4, BLOCK_C=4)
    t = p.tensors(torch.float32, DEVICE)
    _, _, grads = _run(p, t)
    _check_all(p, t, torch.float32)
    if not p.mask:
        assert grads["mask"].numel() == 0
    if not p.bias:
        assert grads["bias"].numel() == 0


@pytest.mark.parametrize("index_64", [False, True])
def test_both_index_widths(index_64, monkeypatch):
    seen = []
    real = launch.index_64
    monkeypatch.setattr(launch, "index_64",
                        lambda *ts: seen.append(index_64) or (index_64 or real(*ts)))
    p = Problem(N=2, C=4, O=3, size=(5, 6), offset_groups=2)
    _check_all(p, p.tensors(torch.float32, DEVICE), torch.float32)
    assert seen and set(seen) == {index_64}


def test_integer_positions_on_the_padding_border():
    # Integer offsets with padding: taps at exactly -1 and at the last row/column, where only
    # the floor-based one-sided derivative is defined (the oracle's autograd gives it).
    p = Problem(N=1, C=4, O=3, size=(5, 6), offset_groups=2)
    t = p.tensors(torch.float32, DEVICE)
    g = torch.Generator().manual_seed(3)
    t["offset"] = torch.randint(-2, 3, t["offset"].shape, generator=g).float().to(DEVICE)
    t["offset"][:, :6] = 0.0
    _check_all(p, t, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(dtype):
    p = Problem(N=1, C=4, O=3, size=(5, 6), offset_groups=2, weight_scale=0.5)
    _check_all(p, p.tensors(dtype, DEVICE), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_dtypes(dtype):
    """The CUDA autocast rule's arguments: data in ``dtype``, offsets and mask in float32.
    Output and data gradients in ``dtype``, offset and mask gradients in float32."""
    from deformconv.ops.autocast import cuda_cast

    p = Problem(N=1, C=4, O=3, size=(5, 6), offset_groups=2, weight_scale=0.5)
    t32 = p.tensors(torch.float32, DEVICE)
    cast = cuda_cast(*(t32[n] for n in LAUNCH_ORDER), dtype)
    t = dict(zip(LAUNCH_ORDER, cast))
    assert t["offset"].dtype == t["mask"].dtype == torch.float32
    assert t["input"].dtype == t["weight"].dtype == t["bias"].dtype == dtype
    out, _, grads = _run(p, t)
    assert out.dtype == dtype and grads["offset"].dtype == torch.float32
    _check_all(p, t, dtype)


def test_float32_offsets_keep_their_precision():
    """Offsets are not rounded to the data dtype: positions far from the origin with small
    fractional parts sample as the float32 positions say."""
    from deformconv.ops.autocast import cuda_cast

    p = Problem(N=1, C=4, O=2, size=(3, 300), kernel=(1, 1), padding=0, offset_scale=0.0)
    t32 = p.tensors(torch.float32, DEVICE)
    t32["offset"][:, 1] = 0.3  # x = ox + 0.3: bfloat16 would round 250.3 to 250
    t = dict(zip(LAUNCH_ORDER, cuda_cast(*(t32[n] for n in LAUNCH_ORDER), torch.bfloat16)))
    out = launch.deform_conv_fwd(*(t[n] for n in LAUNCH_ORDER), *_params(p))
    ref, _ = _oracle(p, t, p.grad_out(torch.float64))
    assert_close(out, ref, torch.bfloat16, "output")


def test_hostile_offsets():
    p = Problem(N=1, C=4, O=3, size=(4, 5), offset_groups=2)
    t = p.tensors(torch.float32, DEVICE)
    bad = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 4.0, -1.0, 5.0]
    flat = t["offset"].view(-1)
    idx = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(3))[:40]
    flat[idx] = torch.tensor(bad * 5, device=flat.device)
    _, _, grads = _run(p, t)
    _check_all(p, t, torch.float32)
    nonfinite = ~torch.isfinite(t["offset"])
    assert nonfinite.any() and (grads["offset"][nonfinite] == 0).all()


def test_output_mask_subsets_and_empty_batch():
    p = Problem(N=1, C=4, O=3, size=(4, 4))
    t = p.tensors(torch.float32, DEVICE)
    _, grad_out, grads = _run(p, t, output_mask=(False, True, False, False))
    _, ref_grads = _oracle(p, t, grad_out)
    assert_close(grads["weight"], ref_grads["weight"], torch.float32, "weight")
    assert all(grads[n].numel() == 0 for n in ("input", "offset", "mask", "bias"))
    e = {n: v[:0] if n not in ("weight", "bias") else v for n, v in t.items()}
    args = [e[n] for n in LAUNCH_ORDER]
    out = launch.deform_conv_fwd(*args, *_params(p))
    assert out.shape == (0, 3, 4, 4)
    g = launch.deform_conv_bwd(out, *args, *_params(p), [True, True, True, True])
    assert g[0].shape == (0, 4, 4, 4) and g[2].shape == e["offset"].shape
    assert g[1].shape == t["weight"].shape and (g[1] == 0).all() and (g[4] == 0).all()

