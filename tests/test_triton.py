"""The Triton kernels' tests (tests/triton_cases.py).

With a GPU they run here, compiled. Without one they run in the Triton interpreter
(``TRITON_INTERPRET=1``) in a fresh Python process: the variable must be set before Triton is
imported, and inside a long pytest session other tests (inductor compiles) leave Triton's
global state such that interpreted kernels fail with "Cannot call @triton.jit'd outside of the
scope of a kernel". A fresh process makes the result independent of what ran before.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

if torch.cuda.is_available():
    from triton_cases import *  # noqa: F401,F403  (the same cases, compiled on the GPU)
else:
    def test_triton_kernels_in_interpreter():
        pytest.importorskip("triton")
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ, TRITON_INTERPRET="1")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
             os.path.join(here, "triton_cases.py")],
            cwd=os.path.dirname(here), env=env, capture_output=True, text=True, timeout=600)
        out = proc.stdout + proc.stderr
        print(out[-3000:])
        assert proc.returncode == 0, out[-6000:]
        assert " passed" in out and " failed" not in out
