"""Prints the versions of deformconv, Python and torch, the CPU thread count, which kernel the CPU
and the GPU (if any) would run, and the versions of the optional packages."""

from __future__ import annotations

import argparse
import sys

USES_BACKEND = False  # runs no op: the CLI need not check the kernel backend setting
NAME = "info"
HELP = "versions and available kernels"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _version(module: str) -> str:
    import importlib
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as e:  # missing, or fails to load with this torch
        return f"not available ({type(e).__name__})"


def _kernels(triton: str) -> str:
    """The kernel backend text: ``deformconv.ops.dispatch.describe()`` where it exists."""
    import torch
    try:
        from ..ops import dispatch
    except ImportError:
        dispatch = None
    describe = getattr(dispatch, "describe", None)
    if describe is not None:
        try:
            return str(describe()).rstrip()
        except ValueError as e:  # a bad DEFORMCONV_BACKEND: run() reports it
            return f"  unknown: {e}"
    lines = ["  cpu:  pure PyTorch (embedding_bag sampling + oneDNN/BLAS convolution)"]
    if torch.cuda.is_available():
        kind = ("Triton fused kernels" if not triton.startswith("not")
                else "pure PyTorch (install the 'triton' extra for the fused kernels)")
        lines.append(f"  cuda: {kind} on {torch.cuda.get_device_name(0)}")
    else:
        lines.append("  cuda: no GPU visible")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import platform

    import torch

    from .. import __version__

    triton = _version("triton")
    print(f"deformconv {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print("kernels:")
    print(_kernels(triton))
    print(f"optional packages: triton {triton}, onnxruntime {_version('onnxruntime')}, "
          f"onnx {_version('onnx')}, matplotlib {_version('matplotlib')}")
    from ._backend import backend_setting_error
    error = backend_setting_error()
    if error is not None:  # the rest is printed: it helps diagnose the setting
        print(f"deformconv info: error: {error}", file=sys.stderr)
        return 2
    return 0
