"""The operators, one folder each (``deform_conv``, ``roi_pool``), and what they share
(``checks``, ``dispatch``, ``autocast``, ``registration``, ``bilinear``, ``triton``)."""

from .deform_conv import library as _deform_conv_library  # noqa: F401, I001 (ops first)
from . import dispatch  # noqa: F401 (registers the CPU/CUDA kernels; Triton on first use)
from . import autocast
from .deform_conv import onnx, onnx_nd  # torch.onnx only (cheap); onnx/onnxscript optional
from .deform_conv import library_nd  # noqa: F401 (registers deformconv::deform_conv1d/3d)
from .deform_conv.functional import deform_conv2d
from .deform_conv.functional_nd import deform_conv1d, deform_conv3d
from .roi_pool.functional import deform_roi_pool  # registers deformconv::deform_roi_pool
from . import ms_deform_attn  # noqa: F401 (the operator folder; registers its ops)
from .dcnv3.functional import dcnv3  # registers deformconv::dcnv3
from .dcnv4.functional import dcnv4  # registers deformconv::dcnv4

autocast.register()
onnx.register_torchscript_symbolic()
onnx_nd.register_torchscript_symbolic()
onnx_nd.register_dynamo_translations()

__all__ = ["deform_conv1d", "deform_conv2d", "deform_conv3d", "deform_roi_pool", "dcnv3", "dcnv4"]
