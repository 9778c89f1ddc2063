"""Where deformable layers sample: locations as tensors (``sampling``, every dimensionality)
and pictures of them (``plots``, matplotlib imported only when drawing).

The demo's figures and ``deformconv visualize`` draw with these functions.
"""

from .plots import (
    MARK_COLOUR,
    POINT_COLOUR,
    RING_COLOUR,
    Cell,
    comparison_figure,
    density,
    draw_sampling,
    plot_sampling_points,
    spread_plot,
)
from .sampling import (
    LayerSampling,
    effective_sampling,
    effective_sampling_batch,
    effective_sampling_points,
    layer_sampling,
    off_image,
    sampling_locations,
    weighted_spread,
)

__all__ = ["LayerSampling", "layer_sampling", "sampling_locations", "effective_sampling",
           "effective_sampling_batch", "effective_sampling_points", "weighted_spread",
           "density", "off_image", "draw_sampling", "plot_sampling_points", "Cell",
           "comparison_figure", "spread_plot", "POINT_COLOUR", "MARK_COLOUR", "RING_COLOUR"]
