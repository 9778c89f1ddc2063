"""ONNX export of ``deform_conv1d`` and ``deform_conv3d`` (see ``onnx.py`` for the 2-D op)."""

from __future__ import annotations

from .onnx import exporting_with_symbolic  # noqa: F401  (one definition of "exporting")


def deform_conv_nd_symbolic(input, weight, offset, mask, bias, stride, padding, dilation):
    raise NotImplementedError("ONNX export of deform_conv1d/deform_conv3d")
