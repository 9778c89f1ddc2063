"""Deformable convolution layers."""

from .deform_conv import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack

__all__ = ["DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack"]

from .deform_conv_nd import (DeformConv1d, DeformConv1dPack, DeformConv3d,  # noqa: E402
                             DeformConv3dPack, ModulatedDeformConv1dPack,
                             ModulatedDeformConv3dPack)

__all__ += ["DeformConv1d", "DeformConv3d", "DeformConv1dPack", "DeformConv3dPack",
            "ModulatedDeformConv1dPack", "ModulatedDeformConv3dPack"]
