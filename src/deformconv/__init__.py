"""deformconv: deformable convolution (1-D, 2-D, 3-D; v1 and v2) and deformable RoI pooling for
PyTorch."""

from ._version import __version__
from .convert import convert_to_deformable
from .nn import (
                 DCNv3,
                 DCNv4,
                 DeformConv1d,
                 DeformConv1dPack,
                 DeformConv2d,
                 DeformConv2dPack,
                 DeformConv3d,
                 DeformConv3dPack,
                 DeformRoIPool,
                 DeformRoIPoolPack,
                 ModulatedDeformConv1dPack,
                 ModulatedDeformConv2dPack,
                 ModulatedDeformConv3dPack,
                 ModulatedDeformRoIPoolPack,
)
from .ops import dcnv3, dcnv4, deform_conv1d, deform_conv2d, deform_conv3d, deform_roi_pool
from .ops.dispatch import set_backend, use_backend

__all__ = ["deform_conv1d", "deform_conv2d", "deform_conv3d", "deform_roi_pool",
           "DeformConv1d", "DeformConv2d", "DeformConv3d",
           "DeformConv1dPack", "DeformConv2dPack", "DeformConv3dPack",
           "ModulatedDeformConv1dPack", "ModulatedDeformConv2dPack", "ModulatedDeformConv3dPack",
           "DeformRoIPool", "DeformRoIPoolPack", "ModulatedDeformRoIPoolPack",
           "convert_to_deformable", "set_backend", "use_backend", "__version__"]
__all__ += ["dcnv3", "dcnv4", "DCNv3", "DCNv4"]
