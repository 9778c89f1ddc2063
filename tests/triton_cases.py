"""Triton kernels against the float64 oracle: forward and all five gradients.

Collected through tests/test_triton.py: in-process on a GPU, in a fresh interpreter process
without one.

Without a GPU the kernels run in the Triton interpreter on CPU tensors (``TRITON_INTERPRET=1``
must be set before the kernels are compiled, hence before ``launch`` is imported), on tiny
shapes and small blocks so every case still spans several tiles, channel blocks and
output-channel blocks. With a GPU the same cases run compiled on it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from deformconv.ops import torch_impl
from deformconv.reference import deform_conv2d_ref

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
if not HAS_CUDA:
    # Read when triton is first imported and when kernels are decorated, so it is set before
    # either and stays set; it only affects Triton kernels, which nothing else runs on CPU.
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")
from deformconv.ops.triton import launch  # noqa: E402

# Tolerance relative to max(1, max |reference|), per dtype (TF32 off for float32).
TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 3e-2}
GRADS = ("input", "weight", "offset", "mask", "bias")


@pytest.fixture(autouse=True)
def _nan_fill_and_blocks(monkeypatch):
    monkeypatch.setattr(launch, "DEBUG_FILL_NAN", True)
    monkeypatch.setattr(launch, "INTERPRETER_BLOCKS", dict(launch.INTERPRETER_BLOCKS))
    # allow_tf32 is a computed attribute that pytest 9.2's monkeypatch cannot undo: restore it
    # by hand.
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = tf32


def _problem(N, C, H, W, O, k, stride, pad, dil, groups, G, mask, bias, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    kH, kW = k
    oH = (H + 2 * pad[0] - dil[0] * (kH - 1) - 1) // stride[0] + 1
    oW = (W + 2 * pad[1] - dil[1] * (kW - 1) - 1) // stride[1] + 1
    t = dict(input=torch.randn(N, C, H, W, generator=g),
             weight=torch.randn(O, C // groups, kH, kW, generator=g),
             offset=2 * torch.randn(N, 2 * G * kH * kW, oH, oW, generator=g),
             mask=torch.rand(N, G * kH * kW, oH, oW, generator=g) if mask else None,
             bias=torch.randn(O, generator=g) if bias else None)
    # Round to the tested dtype once, so the oracle sees exactly the kernel's inputs.
    return {n: (v.to(dtype).to(DEV) if v is not None else None) for n, v in t.items()}


def _oracle(t, stride, pad, dil, grad_out):
    d = {n: (v.detach().cpu().double().requires_grad_() if v is not None else None)
         for n, v in t.items()}
    out = deform_conv2d_ref(d["input"], d["offset"], d["weight"], d["bias"], stride, pad, dil,
                            d["mask"])
    ins = [d[n] for n in GRADS if d[n] is not None]
    grads = iter(torch.autograd.grad(out, ins, grad_out.cpu().double()))
    return out.detach(), {n: next(grads) for n in GRADS if d[n] is not None}


def _close(name, actual, expected, dtype):
    assert actual.dtype == dtype, name
    actual = actual.detach().cpu().double()
    assert actual.shape == expected.shape, name
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    err = (actual - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert err <= TOL[dtype] * scale, f"{name}: max error {err:.3g} (scale {scale:.3g})"


def _run(t, stride, pad, dil, dtype, output_mask=(True, True, True, True)):
    args = (*stride, *pad, *dil)
    out = launch.deform_conv2d_fwd(t["input"], t["weight"], t["offset"], t["mask"], t["bias"],
                                   *args)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = launch.deform_conv2d_bwd(grad_out.to(DEV), t["input"], t["weight"], t["offset"],
                                     t["mask"], t["bias"], *args, list(output_mask))
    # Strides must match the registered fake implementation's (contiguous), or compile breaks.
    assert out.is_contiguous() and all(g.is_contiguous() for g in grads)
    return out, grad_out, dict(zip(GRADS, grads))


CASES = {
    # N, C, H, W, O, kernel, stride, padding, dilation, groups, offset groups, mask, bias
    "groups_and_offset_groups_straddle": (2, 6, 4, 5, 4, (3, 3), (1, 1), (1, 1), (1, 1), 2, 3,
                                          True, True),
    "strided_dilated_no_mask": (1, 8, 7, 6, 5, (3, 2), (2, 1), (2, 1), (2, 1), 1, 1, False,
                                True),
    "one_pixel_image": (2, 3, 1, 1, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True),
    "offset_groups_no_bias": (1, 8, 4, 5, 6, (2, 3), (1, 2), (0, 1), (1, 1), 2, 4, True, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_float32_forward_and_grads(name):
    N, C, H, W, O, k, stride, pad, dil, groups, G, mask, bias = CASES[name]
    if name == "strided_dilated_no_mask":  # several channel and output-channel blocks
        launch.INTERPRETER_BLOCKS.update(BLOCK_M=8, BLOCK_N=4, BLOCK_C=4)
    t = _problem(N, C, H, W, O, k, stride, pad, dil, groups, G, mask, bias, torch.float32)
    out, grad_out, grads = _run(t, stride, pad, dil, torch.float32)
    ref, ref_grads = _oracle(t, stride, pad, dil, grad_out)
    _close("output", out, ref, torch.float32)
    for n, r in ref_grads.items():
        _close(n, grads[n], r, torch.float32)
    if not mask:
        assert grads["mask"].numel() == 0
    if not bias:
        assert grads["bias"].numel() == 0


def test_integer_positions_on_the_padding_border():
    # Zero and integer offsets with padding: taps at exactly -1 and at integers, where only
    # the floor-based one-sided derivative is defined (the oracle's autograd gives it).
    t = _problem(1, 4, 5, 6, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, True, True,
                 torch.float32)
    t["offset"] = torch.randint(-2, 3, t["offset"].shape, generator=torch.Generator()
                                .manual_seed(3)).to(torch.float32).to(DEV)
    t["offset"][:, :6] = 0.0
    out, grad_out, grads = _run(t, (1, 1), (1, 1), (1, 1), torch.float32)
    want, want_grads = _oracle(t, (1, 1), (1, 1), (1, 1), grad_out)
    _close("output", out, want, torch.float32)
    for name in GRADS:
        _close(name, grads[name], want_grads[name], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(dtype):
    stride, pad, dil = (1, 1), (1, 1), (1, 1)
    t = _problem(1, 4, 5, 6, 3, (3, 3), stride, pad, dil, 1, 2, True, True, dtype)
    out, grad_out, grads = _run(t, stride, pad, dil, dtype)
    ref, ref_grads = _oracle(t, stride, pad, dil, grad_out)
    _close("output", out, ref, dtype)
    for n, r in ref_grads.items():
        _close(n, grads[n], r, dtype)


def test_hostile_offsets():
    stride, pad, dil = (1, 1), (1, 1), (1, 1)
    t = _problem(1, 4, 4, 5, 3, (3, 3), stride, pad, dil, 1, 2, True, True, torch.float32)
    off = t["offset"]
    bad = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 4.0, -1.0, 5.0]
    flat = off.view(-1)
    idx = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(3))[:40]
    flat[idx] = torch.tensor(bad * 5, device=off.device)
    out, grad_out, grads = _run(t, stride, pad, dil, torch.float32)
    ref, ref_grads = _oracle(t, stride, pad, dil, grad_out)
    _close("output", out, ref, torch.float32)
    for n, r in ref_grads.items():
        _close(n, grads[n], r, torch.float32)
    nonfinite = ~torch.isfinite(off)
    assert (grads["offset"][nonfinite] == 0).all()


def test_output_mask_subsets_and_empty_batch():
    stride, pad, dil = (1, 1), (1, 1), (1, 1)
    t = _problem(1, 4, 4, 4, 3, (3, 3), stride, pad, dil, 1, 1, True, True, torch.float32)
    out, grad_out, grads = _run(t, stride, pad, dil, torch.float32, (False, True, False, False))
    _, ref_grads = _oracle(t, stride, pad, dil, grad_out)
    _close("weight", grads["weight"], ref_grads["weight"], torch.float32)
    assert all(grads[n].numel() == 0 for n in ("input", "offset", "mask", "bias"))
    e = {n: v[:0] if n not in ("weight", "bias") else v for n, v in t.items()}
    out = launch.deform_conv2d_fwd(e["input"], e["weight"], e["offset"], e["mask"], e["bias"],
                                   *stride, *pad, *dil)
    assert out.shape == (0, 3, 4, 4)
    g = launch.deform_conv2d_bwd(out, e["input"], e["weight"], e["offset"], e["mask"], e["bias"],
                                 *stride, *pad, *dil, [True, True, True, True])
    assert g[0].shape == (0, 4, 4, 4) and g[2].shape == e["offset"].shape
    assert (g[1] == 0).all() and (g[4] == 0).all()


def test_deterministic_mode_uses_pure_pytorch_input_grad():
    stride, pad, dil = (1, 1), (1, 1), (1, 1)
    t = _problem(1, 4, 4, 5, 3, (3, 3), stride, pad, dil, 1, 1, True, False, torch.float32)
    grad_out = torch.randn(1, 3, 4, 5).to(DEV)
    args = (t["input"], t["weight"], t["offset"], t["mask"], None, *stride, *pad, *dil)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        gi, gw, goff, gm, _ = launch.deform_conv2d_bwd(grad_out, *args, [True, True, True, False])
        expect = torch_impl.deform_conv2d_bwd(grad_out, *args, [True, False, False, False])[0]
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(gi, expect)
    _, ref_grads = _oracle(t, stride, pad, dil, grad_out)
    for n, got in (("input", gi), ("weight", gw), ("offset", goff), ("mask", gm)):
        _close(n, got, ref_grads[n], torch.float32)


def test_float64_goes_to_pure_pytorch():
    t = _problem(1, 2, 4, 4, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True, torch.float64)
    args = (t["input"], t["weight"], t["offset"], t["mask"], t["bias"], 1, 1, 1, 1, 1, 1)
    assert torch.equal(launch.deform_conv2d_fwd(*args), torch_impl.deform_conv2d_fwd(*args))


def test_package_import_does_not_import_triton():
    code = ("import sys, deformconv, deformconv.ops.cuda as c; "
            "assert not any(m == 'triton' or m.startswith(('triton.', 'deformconv.ops.triton'))"
            " for m in sys.modules), 'triton imported at package import'; "
            "assert c.backend().__name__ == 'deformconv.ops.triton.launch'")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


COMPILE_SM90 = """
import sys
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from deformconv.ops.triton import kernels as K
dt = sys.argv[1]
ptrs = dict.fromkeys(["x_ptr", "w_ptr", "off_ptr", "mask_ptr", "bias_ptr", "out_ptr", "gout_ptr",
                      "goff_ptr", "gmask_ptr"], "*" + dt)
ptrs.update(gin_ptr="*fp32", gw_ptr="*fp32", blk_ptr="*i32")
common = dict(KH=3, KW=3, HAS_MASK=True, INPUT_PRECISION="ieee", DOT_UPCAST=False, BLOCK_M=64,
              BLOCK_C=32)
for fn, extra in ((K._deform_conv2d_fwd_kernel, dict(HAS_BIAS=True, BLOCK_N=64)),
                  (K._deform_conv2d_bwd_data_kernel, dict(NEED_IN=True, NEED_OM=True, BLOCK_O=64)),
                  (K._deform_conv2d_bwd_weight_kernel, dict(BLOCK_N=64))):
    consts = dict(common, **extra)
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "i32") for n in fn.arg_names}
    idx = {(fn.arg_names.index(k),): v for k, v in consts.items()}
    compile(ASTSource(fn=fn, signature=sig, constexprs=idx), target=GPUTarget("cuda", 90, 32),
            options=dict(num_warps=4, num_stages=2))
"""


@pytest.mark.slow
def test_kernels_compile_for_hopper_without_gpu():
    """The interpreter forgives what the compiler rejects: compile all kernels for sm_90."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    r = subprocess.run([sys.executable, "-c", COMPILE_SM90, "bf16"], env=env, timeout=300,
                       capture_output=True, text=True)
    if r.returncode != 0 and "ImportError" in r.stderr:
        pytest.skip(f"this triton has no offline compile API: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_dispatch_and_compile():
    from deformconv.ops import deform_conv2d

    t = _problem(2, 8, 9, 11, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True,
                 torch.float32)
    for v in t.values():
        v.requires_grad_()
    out = deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], padding=1,
                        mask=t["mask"])
    ref, _ = _oracle(t, (1, 1), (1, 1), (1, 1), torch.ones_like(out))
    _close("output", out, ref, torch.float32)
    compiled = torch.compile(deform_conv2d, fullgraph=True)
    out_c = compiled(t["input"], t["offset"], t["weight"], t["bias"], padding=1, mask=t["mask"])
    out_c.sum().backward()
    _close("compiled output", out_c, ref, torch.float32)
