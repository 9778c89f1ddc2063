"""Deformable convolution layers."""

from .deform_conv import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack
from .roi_pool import DeformRoIPool, DeformRoIPoolPack, ModulatedDeformRoIPoolPack

__all__ = ["DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack",
           "DeformRoIPool", "DeformRoIPoolPack", "ModulatedDeformRoIPoolPack"]
