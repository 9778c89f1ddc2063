"""Which kernel runs (``deformconv.ops.dispatch``): the backend setting, float64, deterministic
mode, and the fallback to the pure-PyTorch kernels when a Triton kernel fails."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import warnings

import pytest
import torch

import deformconv
from deformconv import deform_conv2d
from deformconv.ops import dispatch
from deformconv.ops.deform_conv import torch_kernels as torch_impl
from deformconv.ops.deform_conv.reference import deform_conv_ref
from deformconv.testing import Problem, assert_close

pytest.importorskip("triton")
from deformconv.ops.deform_conv.triton import kernels, launch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PROBLEM = Problem(N=1, C=4, O=3, size=(4, 5), offset_groups=2)


@pytest.fixture
def calls(monkeypatch):
    """Counts of the Triton launchers' calls."""
    seen = {"fwd": 0, "bwd": 0}
    fwd, bwd = launch.deform_conv_fwd, launch.deform_conv_bwd

    def spy_fwd(*a):
        seen["fwd"] += 1
        return fwd(*a)

    def spy_bwd(*a):
        seen["bwd"] += 1
        return bwd(*a)

    monkeypatch.setattr(launch, "deform_conv_fwd", spy_fwd)
    monkeypatch.setattr(launch, "deform_conv_bwd", spy_bwd)
    return seen


def _forward_backward(p: Problem, dtype=torch.float32):
    t = p.tensors(dtype, DEVICE, requires_grad=True)
    out = deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], mask=t["mask"],
                        **p.kwargs())
    out.backward(p.grad_out(dtype, DEVICE))
    return t, out


def _oracle(p: Problem, t):
    d = {n: v.detach().cpu().double().requires_grad_() for n, v in t.items() if v is not None}
    out = deform_conv_ref(d["input"], d["offset"], d["weight"], d["bias"], p.strides,
                            p.paddings, p.dilations, d["mask"])
    out.backward(p.grad_out())
    return out.detach(), {n: v.grad for n, v in d.items()}


def test_setting_precedence(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    assert dispatch.backend() == "torch"
    deformconv.set_backend("triton")  # explicit beats the environment
    assert dispatch.backend() == "triton"
    with deformconv.use_backend("auto"):  # the innermost context beats set_backend
        assert dispatch.backend() == "auto"
        with deformconv.use_backend("torch"):
            assert dispatch.backend() == "torch"
        assert dispatch.backend() == "auto"
    assert dispatch.backend() == "triton"
    deformconv.set_backend(None)
    assert dispatch.backend() == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="DEFORMCONV_BACKEND must be one of"):
        dispatch.backend()
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'fast'"):
        deformconv.set_backend("fast")
    with pytest.raises(ValueError, match="got 'gpu'"), deformconv.use_backend("gpu"):
        pass


def test_chosen_backend_runs(calls):
    with deformconv.use_backend("torch"):
        _forward_backward(PROBLEM)
    assert calls == {"fwd": 0, "bwd": 0}
    with deformconv.use_backend("triton"):
        t, out = _forward_backward(PROBLEM)
    assert calls == {"fwd": 1, "bwd": 1}
    ref, ref_grads = _oracle(PROBLEM, t)
    assert_close(out, ref, torch.float32, "output")
    for n, g in ref_grads.items():
        assert_close(t[n].grad, g, torch.float32, n)
    assert "backend auto" in dispatch.describe() and "triton" in dispatch.describe()


def test_float64_runs_pure_pytorch(calls):
    t = PROBLEM.tensors(torch.float64, DEVICE)
    args = (t["input"], t["weight"], t["offset"], t["mask"], t["bias"], 1, 1, 1, 1, 1, 1)
    with deformconv.use_backend("triton"):
        out = torch.ops.deformconv.deform_conv2d(*args)
    assert calls["fwd"] == 0
    assert torch.equal(out, torch_impl.deform_conv_fwd(*args[:5], [1, 1], [1, 1], [1, 1]))


def test_deterministic_mode_runs_the_atomic_backward_on_pure_pytorch(calls):
    """The one rule of dispatch: a launcher function listed in NONDETERMINISTIC (atomic
    scatters) runs on the pure-PyTorch kernels under deterministic mode; the forward stays."""
    t = PROBLEM.tensors(torch.float32, DEVICE)
    args = (t["input"], t["weight"], t["offset"], t["mask"], None, 1, 1, 1, 1, 1, 1)
    grad_out = PROBLEM.grad_out(torch.float32, DEVICE)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with deformconv.use_backend("triton"):
            torch.ops.deformconv.deform_conv2d(*args)
            grads = torch.ops.deformconv.deform_conv2d_backward(grad_out, *args,
                                                                [True, True, True, False])
        expect = torch_impl.deform_conv_bwd(grad_out, *args[:5], [1, 1], [1, 1], [1, 1],
                                            [True, True, True, False])
    finally:
        torch.use_deterministic_algorithms(before)
    assert calls["fwd"] == 1 and calls["bwd"] == 0
    for got, want in zip(grads, expect):
        assert torch.equal(got, want)


def _broken_kernel(tmp_path, like):
    """A kernel with ``like``'s arguments that fails at compile time (static_assert)."""
    sig = inspect.signature(like.fn)
    params = ", ".join(f"{n}: tl.constexpr" if "constexpr" in str(p.annotation) else n
                       for n, p in sig.parameters.items())
    src = ("import triton\nimport triton.language as tl\n\n\n@triton.jit\n"
           f"def broken({params}):\n    tl.static_assert(False, 'planted compile failure')\n")
    path = tmp_path / "planted_broken_kernel.py"
    path.write_text(src)
    sys.path.insert(0, str(tmp_path))
    try:
        import planted_broken_kernel  # noqa: PLC0415
    finally:
        sys.path.remove(str(tmp_path))
    return planted_broken_kernel.broken


def test_compile_failure_falls_back_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "_deform_conv2d_fwd_kernel",
                        _broken_kernel(tmp_path, kernels._deform_conv2d_fwd_kernel))
    t = PROBLEM.tensors(torch.float32, DEVICE)
    args = [t[n] for n in ("input", "offset", "weight", "bias")]
    with deformconv.use_backend("triton"):
        with pytest.warns(RuntimeWarning,
                          match="Triton deform_conv2d forward kernel failed .*planted"):
            out = deform_conv2d(*args, padding=1, mask=t["mask"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # one warning only
            again = deform_conv2d(*args, padding=1, mask=t["mask"])
    with deformconv.use_backend("torch"):
        want = deform_conv2d(*args, padding=1, mask=t["mask"])
    assert torch.equal(out, want) and torch.equal(again, want)
    assert "deform_conv2d forward" in dispatch._failed and "planted" in dispatch.describe()


def test_package_import_does_not_import_triton():
    code = ("import sys, deformconv; "
            "assert not any(m == 'triton' or m.startswith('triton.') or '.triton.' in m"
            " for m in sys.modules), 'triton imported at package import'; "
            "from deformconv.ops import dispatch; assert dispatch.triton_available()")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
