"""deformconv: deformable operators for PyTorch: deformable convolution (1-D, 2-D, 3-D; v1 and
v2), deformable RoI pooling, multi-scale deformable attention, DCNv3 and DCNv4."""

from . import nn
from ._version import __version__
from .convert import convert_to_deformable
from .nn import *  # noqa: F403 (the layers: nn.__all__)
from .ops import deform_conv1d, deform_conv2d, deform_conv3d, deform_roi_pool
from .ops.dcnv3.functional import dcnv3
from .ops.dcnv4.functional import dcnv4
from .ops.dispatch import set_backend, use_backend
from .ops.ms_deform_attn.functional import ms_deform_attn

__all__ = ["deform_conv1d", "deform_conv2d", "deform_conv3d", "deform_roi_pool", "ms_deform_attn",
           "dcnv3", "dcnv4", *nn.__all__, "convert_to_deformable", "set_backend", "use_backend",
           "__version__"]
