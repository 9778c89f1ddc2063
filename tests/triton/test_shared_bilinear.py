"""The shared Triton sampling helpers (``deformconv.ops.triton.bilinear``) against the shared
pure-PyTorch sampler, both lower cut-offs, hostile positions included."""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

import triton  # noqa: E402
from deformconv.ops import bilinear  # noqa: E402
from deformconv.ops.triton.bilinear import (  # noqa: E402
    corner_weights,
    corners_2d,
    position_grad_2d,
)

DEV = "cuda" if HAS_CUDA else "cpu"


@triton.jit
def _sample_kernel(img_ptr, y_ptr, x_ptr, out_ptr, gy_ptr, gx_ptr, M, H, W,
                   STRICT: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < M
    y = tl.load(y_ptr + i, mask=ok, other=0.0)
    x = tl.load(x_ptr + i, mask=ok, other=0.0)
    y0, x0, dx, dy, ok00, ok01, ok10, ok11, ly, lx, inside = corners_2d(
        y, x, H, W, ok, 1, W, STRICT)
    a = y0 * W + x0
    v00 = tl.load(img_ptr + a, mask=ok00, other=0.0)
    v01 = tl.load(img_ptr + a + dx, mask=ok01, other=0.0)
    v10 = tl.load(img_ptr + a + dy, mask=ok10, other=0.0)
    v11 = tl.load(img_ptr + a + dx + dy, mask=ok11, other=0.0)
    w00, w01, w10, w11 = corner_weights(ly, lx, inside.to(tl.float32))
    tl.store(out_ptr + i, w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11, mask=ok)
    gy, gx = position_grad_2d(v00, v01, v10, v11, ly, lx, inside.to(tl.float32))
    tl.store(gy_ptr + i, gy, mask=ok)
    tl.store(gx_ptr + i, gx, mask=ok)


@pytest.mark.parametrize("strict", [False, True])
def test_corners_match_the_shared_pytorch_sampler(strict):
    torch.manual_seed(0)
    H, W, M = 5, 7, 300
    img = torch.randn(H, W, device=DEV)
    y = torch.rand(M, device=DEV) * (H + 4) - 2
    x = torch.rand(M, device=DEV) * (W + 4) - 2
    special = torch.tensor([-1.0, 0.0, H - 1.0, float(H), float("nan"), float("inf"),
                            -float("inf"), 1e30, -1e30, 2.0], device=DEV)
    y[:10], x[:10] = special, special.flip(0)
    y[10:14], x[10:14] = -1.0, 3.5
    out, gy, gx = (torch.empty(M, device=DEV) for _ in range(3))
    _sample_kernel[(triton.cdiv(M, 64),)](img_ptr=img, y_ptr=y, x_ptr=x, out_ptr=out,
                                          gy_ptr=gy, gx_ptr=gx, M=M, H=H, W=W,
                                          STRICT=strict, BLOCK=64)
    plan = bilinear.corner_plan((y, x), (H, W), strict=strict)
    src = bilinear.bordered_source(img[None, :, :, None])
    want = bilinear.sample(src, plan)[:, 0]
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    dots = bilinear.corner_dots(torch.ones(M, 1, device=DEV), src, plan)
    wy, wx = bilinear.position_grad(dots, plan)
    torch.testing.assert_close(gy, wy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, wx, rtol=1e-5, atol=1e-5)
    assert want.abs().sum() > 1 and wy.abs().sum() > 1
    # At y = -1 exactly: value 0; the inclusive cut-off keeps the y-derivative.
    assert torch.all(out[10:14] == 0)
    assert bool((gy[10:14] != 0).any()) != strict
