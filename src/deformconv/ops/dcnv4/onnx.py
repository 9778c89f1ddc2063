"""ONNX export of ``dcnv4``: ``dcnv3``'s decomposition on the split fused tensor."""

from __future__ import annotations

from ..dcnv3.onnx import exporting  # noqa: F401 (re-exported)


def dcnv4_decomposed(*args):
    raise NotImplementedError
