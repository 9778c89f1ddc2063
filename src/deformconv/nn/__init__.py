"""Deformable convolution layers."""

from .deform_conv import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack

__all__ = ["DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack"]
