"""Deformable convolution ops: the public function and the registered operators."""

from .deform_conv import deform_conv2d
from . import registry
from . import cuda  # registers the CUDA kernels (Triton imported lazily)

__all__ = ["deform_conv2d", "registry"]
