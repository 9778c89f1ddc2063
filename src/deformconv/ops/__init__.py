"""Deformable convolution ops: the public function and the registered operators."""

from .deform_conv import deform_conv2d
from . import registry
from . import cuda  # registers the CUDA kernels (Triton imported lazily)
from . import autocast
from . import onnx  # imports torch.onnx only (cheap); onnx/onnxscript stay optional

autocast.register()
onnx.register_torchscript_symbolic()

__all__ = ["deform_conv2d", "registry"]

from .deform_conv_nd import deform_conv1d, deform_conv3d  # noqa: E402
from . import registry_nd  # noqa: E402,F401

__all__ += ["deform_conv1d", "deform_conv3d"]
from . import onnx_nd  # noqa: E402

onnx_nd.register_torchscript_symbolic()
