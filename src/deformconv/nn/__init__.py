"""Deformable convolution layers (1-D, 2-D, 3-D) and deformable RoI pooling modules."""

from .dcnv3 import DCNv3
from .dcnv4 import DCNv4
from .deform_conv import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack
from .deform_conv_nd import (
                             DeformConv1d,
                             DeformConv1dPack,
                             DeformConv3d,
                             DeformConv3dPack,
                             ModulatedDeformConv1dPack,
                             ModulatedDeformConv3dPack,
)
from .roi_pool import DeformRoIPool, DeformRoIPoolPack, ModulatedDeformRoIPoolPack

__all__ = ["DeformConv1d", "DeformConv2d", "DeformConv3d",
           "DeformConv1dPack", "DeformConv2dPack", "DeformConv3dPack",
           "ModulatedDeformConv1dPack", "ModulatedDeformConv2dPack", "ModulatedDeformConv3dPack",
           "DeformRoIPool", "DeformRoIPoolPack", "ModulatedDeformRoIPoolPack"]
__all__ += ["DCNv3", "DCNv4"]
