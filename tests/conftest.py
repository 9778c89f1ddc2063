"""Shared fixtures. Problems and the closeness check live in ``deformconv.testing``.

``device`` runs a test once per backend present: the pure-PyTorch kernels on CPU, and the CUDA
kernels (Triton) when there is a GPU. The Triton interpreter runs the same cases in
``tests/triton``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BACKENDS = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=BACKENDS)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 on CUDA means float32: the kernels follow ``cudnn.allow_tf32`` (on by default),
    and TF32's 10-bit mantissa would miss the float32 tolerances. Tests of TF32 turn it on
    themselves. (A computed attribute that monkeypatch cannot undo: restored by hand.)"""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = tf32


@pytest.fixture
def broken_triton(monkeypatch):
    """``broken_triton(launcher, message)``: force the Triton backend on any tensors and make
    its launcher ``launcher`` raise ``RuntimeError(message)``, with no failure recorded yet,
    so the next call shows the dispatch's fallback."""
    from deformconv.ops import dispatch

    def install(launcher: str, message: str):
        def fail(*args):
            raise RuntimeError(message)

        broken = type("Broken", (), {launcher: staticmethod(fail)})
        monkeypatch.setattr(dispatch, "use_triton", lambda *a: True)
        monkeypatch.setattr(dispatch, "_triton_module", lambda name: broken)
        monkeypatch.setattr(dispatch, "_failed", {})
        return dispatch
    return install


class GPUScript:
    """The GPU script (``benchmarks/gpu``) run on CPU: one step's ``--dry-run`` and one operator
    module's correctness task in the Triton interpreter, each in a subprocess."""

    root = Path(__file__).resolve().parents[1]

    def __init__(self):
        self.env = dict(os.environ, PYTHONPATH=str(self.root / "src"))

    def dry_run(self, step: str, out) -> list:
        """The rows ``run_gpu.py --dry-run --steps <step>`` wrote into ``out``."""
        r = subprocess.run([sys.executable, str(self.root / "benchmarks/gpu/run_gpu.py"),
                            "--dry-run", "--steps", step, "--out", str(out)], env=self.env,
                           cwd=self.root, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return json.loads((out / "bench.json").read_text())

    def operator_task(self, name: str) -> list:
        """The rows of ``gpu_checks.operator_task(name, True)`` in the Triton interpreter."""
        code = ("import json, sys; sys.path[:0] = [sys.argv[1]]; import gpu_checks; "
                f"print(json.dumps(gpu_checks.operator_task({name!r}, True)))")
        r = subprocess.run([sys.executable, "-c", code, str(self.root / "benchmarks/gpu")],
                           env=dict(self.env, TRITON_INTERPRET="1"), cwd=self.root,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def gpu_script():
    """``gpu_script.dry_run(step, out)`` and ``gpu_script.operator_task(name)``: see GPUScript."""
    return GPUScript()
