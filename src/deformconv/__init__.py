"""deformconv: deformable convolution (v1 and v2) for PyTorch."""

from .convert import convert_to_deformable
from .nn import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack
from .ops import deform_conv2d
from .ops.dispatch import set_backend, use_backend

__version__ = "0.1.0"
__all__ = ["deform_conv2d", "DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack",
           "convert_to_deformable", "set_backend", "use_backend", "__version__"]
