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


def run(args: argparse.Namespace) -> int:
    import platform

    import torch

    from .. import __version__
    from ..ops import dispatch
    from ._backend import backend_setting_error

    print(f"deformconv {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    try:
        kernels = dispatch.describe()
    except ValueError as e:  # a bad DEFORMCONV_BACKEND: reported below
        kernels = f"  unknown: {e}"
    print(f"kernels:\n{kernels}")
    print(f"optional packages: triton {_version('triton')}, onnxruntime "
          f"{_version('onnxruntime')}, onnx {_version('onnx')}, matplotlib "
          f"{_version('matplotlib')}")
    error = backend_setting_error()
    if error is not None:  # the rest is printed: it helps diagnose the setting
        print(f"deformconv info: error: {error}", file=sys.stderr)
        return 2
    return 0
