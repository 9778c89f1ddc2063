"""Deformable convolution ops: the public function and the registered operators."""

from .deform_conv import deform_conv2d
from . import registry
from . import cuda  # registers the CUDA kernels (Triton imported lazily)
from . import autocast
from . import onnx  # imports torch.onnx only (cheap); onnx/onnxscript stay optional
from .deform_roi_pool import deform_roi_pool  # registers deformconv::deform_roi_pool

autocast.register()
onnx.register_torchscript_symbolic()

__all__ = ["deform_conv2d", "deform_roi_pool", "registry"]
