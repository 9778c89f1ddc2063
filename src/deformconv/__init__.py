"""deformconv: deformable convolution (1-D, 2-D, 3-D; v1 and v2) and deformable RoI pooling for
PyTorch."""

from . import nn
from ._version import __version__
from .convert import convert_to_deformable
from .nn import *  # noqa: F403 (the layers: nn.__all__)
from .ops import deform_conv1d, deform_conv2d, deform_conv3d, deform_roi_pool
from .ops.dispatch import set_backend, use_backend

__all__ = ["deform_conv1d", "deform_conv2d", "deform_conv3d", "deform_roi_pool",
           *nn.__all__, "convert_to_deformable", "set_backend", "use_backend", "__version__"]
