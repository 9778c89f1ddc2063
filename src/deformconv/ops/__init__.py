"""Deformable convolution ops: the public function and the registered operators."""

from .deform_conv import deform_conv2d
from . import registry
from . import dispatch  # registers the CPU and CUDA kernels (Triton imported lazily)
from . import autocast
from . import onnx  # imports torch.onnx only (cheap); onnx/onnxscript stay optional

autocast.register()
onnx.register_torchscript_symbolic()

__all__ = ["deform_conv2d", "registry"]
