"""Deformable convolution ops: the public functions and the registered operators."""

from . import registry  # noqa: I001 (registration order: the ops before their kernels/rules)
from . import dispatch  # noqa: F401 (registers the CPU/CUDA kernels; Triton on first use)
from . import autocast
from . import onnx, onnx_nd  # import torch.onnx only (cheap); onnx/onnxscript stay optional
from . import registry_nd  # registers deformconv::deform_conv1d/3d
from .deform_conv import deform_conv2d
from .deform_conv_nd import deform_conv1d, deform_conv3d
from .deform_roi_pool import deform_roi_pool  # registers deformconv::deform_roi_pool
from .dcnv3.functional import dcnv3  # registers deformconv::dcnv3
from .dcnv4.functional import dcnv4  # registers deformconv::dcnv4

autocast.register()
onnx.register_torchscript_symbolic()
onnx_nd.register_torchscript_symbolic()
onnx_nd.register_dynamo_translations()

__all__ = ["deform_conv1d", "deform_conv2d", "deform_conv3d", "deform_roi_pool", "registry",
           "registry_nd"]
__all__ += ["dcnv3", "dcnv4"]
