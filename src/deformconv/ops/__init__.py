"""The operators, one folder each (``deform_conv``, ``roi_pool``, ``ms_deform_attn``, ``dcnv3``,
``dcnv4``), and what they share (``checks``, ``dispatch``, ``autocast``, ``registration``,
``bilinear``, ``triton``).

Adding an operator: a folder ``ops/<op>/`` with the role files, and one line below.
"""

from . import (  # noqa: F401 (register their ops)
    dcnv3,
    dcnv4,
    dispatch,  # noqa: F401 (the backend setting; Triton is imported on first use)
    ms_deform_attn,
)
from .deform_conv import onnx  # torch.onnx only (cheap); onnx/onnxscript stay optional
from .deform_conv.functional import deform_conv1d, deform_conv2d, deform_conv3d
from .roi_pool.functional import deform_roi_pool

onnx.register_torchscript_symbolic()

# The new operators' public functions are not bound here: their names are their folders'.
__all__ = ["deform_conv1d", "deform_conv2d", "deform_conv3d", "deform_roi_pool"]
