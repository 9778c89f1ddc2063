"""Checkpoints of mmcv's DeformConv2dPack / ModulatedDeformConv2dPack and torchvision's
DeformConv2d load into our layers (strict) and give the outputs those libraries compute.

The state dicts are written by hand with the other library's key names, and the expected output
is computed independently: the offset predictor by ``F.conv2d``, the channel split as in mmcv's
forward (``o1, o2, mask = chunk(out, 3, dim=1); offset = cat(o1, o2); mask = sigmoid(mask)``),
and the deformable convolution by the float64 loop oracle.
"""

import pytest
import torch
import torch.nn.functional as F

from deformconv import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack
from deformconv.ops.deform_conv.reference import deform_conv_ref

D = torch.float64
CASES = [  # C, O, k, stride, padding, dilation, groups, offset groups
    (4, 6, 3, 1, 1, 1, 1, 1),
    (6, 4, (3, 2), (2, 1), (1, 0), (1, 2), 2, 3),
]


def _mmcv_state_dict(C, O, k, groups, G, per_tap, bias, gen):
    kH, kW = (k, k) if isinstance(k, int) else k
    sd = {"weight": torch.randn(O, C // groups, kH, kW, dtype=D, generator=gen)}
    if bias:
        sd["bias"] = torch.randn(O, dtype=D, generator=gen)
    # Non-zero offsets of a few pixels, away from integers, so the routing matters.
    sd["conv_offset.weight"] = 0.3 * torch.randn(per_tap * G * kH * kW, C, kH, kW, dtype=D,
                                                 generator=gen)
    sd["conv_offset.bias"] = torch.randn(per_tap * G * kH * kW, dtype=D, generator=gen)
    return sd


@pytest.mark.parametrize("case", CASES)
def test_mmcv_deform_conv2d_pack_v1(case):
    C, O, k, s, p, d, groups, G = case
    gen = torch.Generator().manual_seed(1)
    sd = _mmcv_state_dict(C, O, k, groups, G, 2, bias=False, gen=gen)  # mmcv v1: no bias
    layer = DeformConv2dPack(C, O, k, s, p, d, groups, bias=False, deform_groups=G, dtype=D)
    layer.load_state_dict(sd, strict=True)
    x = torch.randn(2, C, 7, 8, dtype=D, generator=gen)
    offset = F.conv2d(x, sd["conv_offset.weight"], sd["conv_offset.bias"], s, p, d)
    assert offset.abs().max() > 1  # the samples really move
    expected = deform_conv_ref(x, offset, sd["weight"], None, s, p, d)
    torch.testing.assert_close(layer(x), expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_mmcv_modulated_deform_conv2d_pack_v2(case, bias):
    C, O, k, s, p, d, groups, G = case
    gen = torch.Generator().manual_seed(2)
    sd = _mmcv_state_dict(C, O, k, groups, G, 3, bias=bias, gen=gen)
    layer = ModulatedDeformConv2dPack(C, O, k, s, p, d, groups, bias=bias, deform_groups=G,
                                      dtype=D)
    layer.load_state_dict(sd, strict=True)
    x = torch.randn(2, C, 7, 8, dtype=D, generator=gen)
    out = F.conv2d(x, sd["conv_offset.weight"], sd["conv_offset.bias"], s, p, d)
    o1, o2, mask = torch.chunk(out, 3, dim=1)  # mmcv's forward
    offset, mask = torch.cat((o1, o2), dim=1), torch.sigmoid(mask)
    expected = deform_conv_ref(x, offset, sd["weight"], sd.get("bias"), s, p, d, mask)
    torch.testing.assert_close(layer(x), expected, rtol=1e-7, atol=1e-9)


def test_our_state_dict_has_mmcv_keys():
    v1 = DeformConv2dPack(4, 4, 3, bias=False)
    v2 = ModulatedDeformConv2dPack(4, 4, 3, deform_groups=2)
    assert list(v1.state_dict()) == ["weight", "conv_offset.weight", "conv_offset.bias"]
    assert list(v2.state_dict()) == ["weight", "bias", "conv_offset.weight", "conv_offset.bias"]
    assert v2.conv_offset.out_channels == 3 * 2 * 9


def test_torchvision_deform_conv2d_state_dict():
    gen = torch.Generator().manual_seed(3)
    C, O, groups, G = 6, 4, 2, 3
    sd = {"weight": torch.randn(O, C // groups, 3, 3, dtype=D, generator=gen),
          "bias": torch.randn(O, dtype=D, generator=gen)}
    layer = DeformConv2d(C, O, 3, stride=2, padding=1, dilation=1, groups=groups, dtype=D)
    layer.load_state_dict(sd, strict=True)
    x = torch.randn(2, C, 7, 6, dtype=D, generator=gen)
    offset = 2 * torch.randn(2, 2 * G * 9, 4, 3, dtype=D, generator=gen)
    mask = torch.rand(2, G * 9, 4, 3, dtype=D, generator=gen)
    expected = deform_conv_ref(x, offset, sd["weight"], sd["bias"], 2, 1, 1, mask)
    torch.testing.assert_close(layer(x, offset, mask), expected, rtol=1e-7, atol=1e-9)
    no_bias = DeformConv2d(C, O, 3, groups=groups, bias=False)  # torchvision: bias=None
    no_bias.load_state_dict({"weight": sd["weight"].float()}, strict=True)


def test_deform_groups_alias_conflict():
    assert DeformConv2dPack(4, 4, 3, deform_groups=2).offset_groups == 2
    with pytest.raises(ValueError, match="deform_groups"):
        ModulatedDeformConv2dPack(4, 4, 3, offset_groups=4, deform_groups=2)
