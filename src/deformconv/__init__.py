"""deformconv: deformable convolution (v1 and v2) for PyTorch."""

from .convert import convert_to_deformable
from .nn import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack
from .ops import deform_conv2d

__version__ = "0.1.0"
__all__ = ["deform_conv2d", "DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack",
           "convert_to_deformable", "__version__"]

from .ops import deform_conv1d, deform_conv3d  # noqa: E402

__all__ += ["deform_conv1d", "deform_conv3d"]

from .nn import (DeformConv1d, DeformConv1dPack, DeformConv3d, DeformConv3dPack,  # noqa: E402
                 ModulatedDeformConv1dPack, ModulatedDeformConv3dPack)

__all__ += ["DeformConv1d", "DeformConv3d", "DeformConv1dPack", "DeformConv3dPack",
            "ModulatedDeformConv1dPack", "ModulatedDeformConv3dPack"]
