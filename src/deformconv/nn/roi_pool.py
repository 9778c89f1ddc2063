"""Deformable RoI pooling layers, mmcv-compatible: same constructor arguments, attribute and
parameter names (``offset_fc.*``, ``mask_fc.*``) and initialisation, so mmcv and mmdetection
state dicts load with ``strict=True`` and give the same outputs."""

from __future__ import annotations

from typing import Optional, Tuple, Union

from torch import Tensor, nn

from ..ops.roi_pool.functional import deform_roi_pool, pool_args
from ._scripting import NotScriptable
from .deform_conv import _positive_int

_IntPair = Union[int, Tuple[int, int]]


class DeformRoIPool(NotScriptable, nn.Module):
    """:func:`~deformconv.deform_roi_pool` as a layer, offsets given to ``forward``.

    Args:
        output_size (int or (int, int)): ``(ph, pw)``; stored as a tuple.
        spatial_scale, sampling_ratio, gamma: as in the function.

    Shape: ``forward(input (N, C, H, W), rois (R, 5), offset (R, 2, ph, pw) or None)``
    -> ``(R, C, ph, pw)``.
    """

    def __init__(self, output_size: _IntPair, spatial_scale: float = 1.0,
                 sampling_ratio: int = 0, gamma: float = 0.1):
        super().__init__()
        # Checked as the function checks them (same messages), stored as Python values.
        (self.output_size, self.spatial_scale, self.sampling_ratio,
         self.gamma) = pool_args(output_size, spatial_scale, sampling_ratio, gamma)

    def forward(self, input: Tensor, rois: Tensor, offset: Optional[Tensor] = None) -> Tensor:
        return deform_roi_pool(input, rois, offset, self.output_size, self.spatial_scale,
                               self.sampling_ratio, self.gamma)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, gamma={self.gamma}")


def _mlp(sizes, last_act: Optional[nn.Module]) -> nn.Sequential:
    """Linear, ReLU, Linear, ReLU, ..., Linear (+ ``last_act``), with the last Linear zeroed."""
    layers = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if k:
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Linear(a, b))
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    if last_act is not None:
        layers.append(last_act)
    return nn.Sequential(*layers)


class DeformRoIPoolPack(DeformRoIPool):
    """Deformable RoI pooling that predicts its own offsets from a plain pool of the region.

    ``offset_fc`` = Linear(ph*pw*C, D), ReLU, Linear(D, D), ReLU, Linear(D, 2*ph*pw), the last
    Linear zero-initialised (a new layer pools like :class:`DeformRoIPool` without offsets).
    ``forward(input (N, C, H, W), rois (R, 5))`` -> ``(R, C, ph, pw)``; ``C`` must equal
    ``output_channels``.
    """

    def __init__(self, output_size: _IntPair, output_channels: int,
                 deform_fc_channels: int = 1024, spatial_scale: float = 1.0,
                 sampling_ratio: int = 0, gamma: float = 0.1):
        super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
        self.output_channels = output_channels = _positive_int("output_channels",
                                                               output_channels)
        self.deform_fc_channels = D = _positive_int("deform_fc_channels", deform_fc_channels)
        K = self.output_size[0] * self.output_size[1]
        self.offset_fc = _mlp([K * output_channels, D, D, 2 * K], None)

    def _check_channels(self, input: Tensor) -> None:
        if not isinstance(input, Tensor) or input.dim() != 4:
            return  # the op's checks say what is wrong
        if input.shape[1] != self.output_channels:
            raise ValueError(f"input channels must equal output_channels "
                             f"({self.output_channels}), got {input.shape[1]}")

    def _offset(self, input: Tensor, rois: Tensor) -> Tuple[Tensor, Tensor]:
        """The plain pool flattened per region, and the offsets predicted from it."""
        self._check_channels(input)
        # (R, C*ph*pw) in (c, i, j) order; R may be 0
        flat = DeformRoIPool.forward(self, input, rois).flatten(1)
        offset = self.offset_fc(flat).view(rois.shape[0], 2, *self.output_size)
        return flat, offset

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:  # type: ignore[override]
        return DeformRoIPool.forward(self, input, rois, self._offset(input, rois)[1])


class ModulatedDeformRoIPoolPack(DeformRoIPoolPack):
    """:class:`DeformRoIPoolPack` times a per-bin mask in (0, 1).

    ``mask_fc`` = Linear(ph*pw*C, D), ReLU, Linear(D, ph*pw), Sigmoid, its last Linear
    zero-initialised (the mask starts at 0.5). ``forward(input, rois)`` -> ``(R, C, ph, pw)``.
    """

    def __init__(self, output_size: _IntPair, output_channels: int,
                 deform_fc_channels: int = 1024, spatial_scale: float = 1.0,
                 sampling_ratio: int = 0, gamma: float = 0.1):
        super().__init__(output_size, output_channels, deform_fc_channels, spatial_scale,
                         sampling_ratio, gamma)
        K = self.output_size[0] * self.output_size[1]
        self.mask_fc = _mlp([K * self.output_channels, self.deform_fc_channels, K],
                            nn.Sigmoid())

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:  # type: ignore[override]
        flat, offset = self._offset(input, rois)
        mask = self.mask_fc(flat).view(rois.shape[0], 1, *self.output_size)
        return DeformRoIPool.forward(self, input, rois, offset) * mask
