"""Shared fixtures. Problems and the closeness check live in ``deformconv.testing``.

``device`` runs a test once per backend present: the pure-PyTorch kernels on CPU, and the CUDA
kernels (Triton) when there is a GPU. The Triton interpreter runs the same cases in
``tests/triton``.
"""

from __future__ import annotations

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
