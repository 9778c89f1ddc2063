"""Deformable convolution layers (1-D, 2-D, 3-D) and deformable RoI pooling modules."""

from .dcnv3 import DCNv3
from .dcnv4 import DCNv4
from .deform_conv import (
                          DeformConv1d,
                          DeformConv1dPack,
                          DeformConv2d,
                          DeformConv2dPack,
                          DeformConv3d,
                          DeformConv3dPack,
                          ModulatedDeformConv1dPack,
                          ModulatedDeformConv2dPack,
                          ModulatedDeformConv3dPack,
)
from .ms_deform_attn import (
    DeformableDetrMultiscaleDeformableAttention,
    MSDeformAttn,
    MultiScaleDeformableAttention,
)
from .roi_pool import DeformRoIPool, DeformRoIPoolPack, ModulatedDeformRoIPoolPack

__all__ = ["DeformConv1d", "DeformConv2d", "DeformConv3d",
           "DeformConv1dPack", "DeformConv2dPack", "DeformConv3dPack",
           "ModulatedDeformConv1dPack", "ModulatedDeformConv2dPack", "ModulatedDeformConv3dPack",
           "DeformRoIPool", "DeformRoIPoolPack", "ModulatedDeformRoIPoolPack",
           "MultiScaleDeformableAttention", "MSDeformAttn",
           "DeformableDetrMultiscaleDeformableAttention",
           "DCNv3", "DCNv4"]
