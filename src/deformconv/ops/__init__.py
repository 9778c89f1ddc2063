"""The operators, one folder each (``deform_conv``, ``roi_pool``, ``ms_deform_attn``, ``dcnv3``,
``dcnv4``), and what they share (``checks``, ``dispatch``, ``autocast``, ``registration``,
``bilinear``, ``triton``).

Adding an operator: a folder ``ops/<op>/`` with the role files, and one line below.
"""

from . import dispatch  # noqa: F401 (the backend setting; Triton is imported on first use)
from .dcnv3.functional import dcnv3
from .dcnv4.functional import dcnv4
from .deform_conv import onnx  # torch.onnx only (cheap); onnx/onnxscript stay optional
from .deform_conv.functional import deform_conv1d, deform_conv2d, deform_conv3d
from .ms_deform_attn.functional import ms_deform_attn
from .roi_pool.functional import deform_roi_pool

onnx.register_torchscript_symbolic()

__all__ = ["deform_conv1d", "deform_conv2d", "deform_conv3d", "deform_roi_pool", "ms_deform_attn",
           "dcnv3", "dcnv4"]
