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
