"""Where deformable layers sample: locations as tensors (``sampling``, every dimensionality)
and pictures of them (``plots``, matplotlib imported only when drawing).

The demo's figures and ``deformconv visualize`` draw with these functions.
"""

from . import plots, sampling
from .plots import *  # noqa: F403 (plots.__all__)
from .sampling import *  # noqa: F403 (sampling.__all__)

__all__ = [*sampling.__all__, *plots.__all__]
