"""deformconv: deformable operators for PyTorch: deformable convolution (1-D, 2-D, 3-D; v1 and
v2), deformable RoI pooling, multi-scale deformable attention, DCNv3 and DCNv4."""

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
                 MultiScaleDeformableAttention,
)
from .ops import dcnv3, dcnv4, deform_conv1d, deform_conv2d, deform_conv3d, deform_roi_pool
from .ops.dispatch import set_backend, use_backend
from .ops.ms_deform_attn import ms_deform_attn

__all__ = ["deform_conv1d", "deform_conv2d", "deform_conv3d", "deform_roi_pool", "ms_deform_attn",
           "DeformConv1d", "DeformConv2d", "DeformConv3d",
           "DeformConv1dPack", "DeformConv2dPack", "DeformConv3dPack",
           "ModulatedDeformConv1dPack", "ModulatedDeformConv2dPack", "ModulatedDeformConv3dPack",
           "DeformRoIPool", "DeformRoIPoolPack", "ModulatedDeformRoIPoolPack",
           "MultiScaleDeformableAttention", "dcnv3", "dcnv4", "DCNv3", "DCNv4",
           "convert_to_deformable", "set_backend", "use_backend", "__version__"]
