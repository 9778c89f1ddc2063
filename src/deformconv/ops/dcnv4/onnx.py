"""ONNX export of ``dcnv4``: ``dcnv3``'s decomposition on views of the fused tensor (the padding
columns are not read)."""

from __future__ import annotations

from torch import Tensor

from ..dcnv3.onnx import exporting, sample_views
from ..dcnv3.torch_kernels import Geometry
from .torch_kernels import views

__all__ = ["dcnv4_decomposed", "exporting"]


def dcnv4_decomposed(input: Tensor, offset_mask: Tensor, *params) -> Tensor:
    """``dcnv4`` as standard tensor operations (arguments validated)."""
    return sample_views(input, *views(offset_mask, Geometry(*params)), *params)
