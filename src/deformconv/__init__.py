"""deformconv: deformable convolution (v1 and v2) for PyTorch."""

from .convert import convert_to_deformable
from .nn import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack
from .nn import DeformRoIPool, DeformRoIPoolPack, ModulatedDeformRoIPoolPack
from .ops import deform_conv1d, deform_conv2d, deform_conv3d, deform_roi_pool
from ._version import __version__
from .ops.dispatch import set_backend, use_backend

__all__ = ["deform_conv2d", "DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack",
           "convert_to_deformable", "__version__", "deform_conv1d", "deform_conv3d",
           "deform_roi_pool", "DeformRoIPool", "DeformRoIPoolPack", "ModulatedDeformRoIPoolPack",
           "set_backend", "use_backend"]
