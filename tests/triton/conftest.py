"""The Triton kernels' suite: compiled on a GPU, or in Triton's interpreter on CPU tensors.

Run it as ``TRITON_INTERPRET=1 python -m pytest -q tests/triton`` (the variable must be set
before Triton is imported, hence on the command line). Without a GPU and without the variable,
or without Triton, every test here is skipped with the reason.

The test-only switches of the launchers live here as fixtures (all autouse):

- ``nan_fill``: buffers the kernels must write completely are filled with NaN first, so a tile
  a kernel forgets fails loudly instead of holding stale memory;
- ``blocks``: the interpreter's block sizes, small so tiny shapes span several tiles, channel
  blocks and output-channel blocks; a test may shrink them further with ``blocks(...)``;
- float32 without TF32, and the backend setting and fallback state reset after each test.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
HAS_TRITON = importlib.util.find_spec("triton") is not None
DEVICE = "cuda" if HAS_CUDA else "cpu"
_SKIP = ("triton is not installed" if not HAS_TRITON else
         None if HAS_CUDA or INTERPRET else
         "no CUDA device and TRITON_INTERPRET is not 1 "
         "(run: TRITON_INTERPRET=1 pytest tests/triton)")


def pytest_collection_modifyitems(config, items):
    if _SKIP is None:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.skip(reason=_SKIP))


@pytest.fixture(autouse=True)
def nan_fill(monkeypatch):
    if _SKIP is not None:
        return
    from deformconv.ops.triton import spec

    def empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(spec, "empty", empty)  # every launcher's one allocation


@pytest.fixture(autouse=True)
def blocks(monkeypatch):
    """Call ``blocks(BLOCK_M=8, ...)`` to override the interpreter's block sizes of every
    kernel (names a kernel lacks are ignored)."""
    if _SKIP is not None:
        yield None
        return
    from deformconv.ops.deform_conv.triton import launch

    blocks = {k: dict(v) for k, v in launch.INTERPRETER_BLOCKS.items()}
    monkeypatch.setattr(launch, "INTERPRETER_BLOCKS", blocks)

    def override(**sizes):
        for table in blocks.values():
            table.update({n: v for n, v in sizes.items() if n in table})

    yield override


@pytest.fixture(autouse=True)
def clean_dispatch():
    # (float32 without TF32 comes from tests/conftest.py's _no_tf32)
    yield
    from deformconv.ops import dispatch

    dispatch.set_backend(None)
    dispatch._failed.clear()
