"""ONNX export of ``dcnv3``: a decomposition into standard nodes, filled in below."""

from __future__ import annotations

import torch


def exporting() -> bool:
    """True inside ``torch.onnx.export``: the public functions then emit the decomposition."""
    return torch.onnx.is_in_onnx_export()


def dcnv3_decomposed(*args):
    raise NotImplementedError
