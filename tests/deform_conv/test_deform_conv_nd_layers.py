"""The 1-D and 3-D layers: nn.Conv1d/nn.Conv3d interface, Pack layers, checkpoint layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deformconv import (
    DeformConv1d,
    DeformConv1dPack,
    DeformConv3d,
    DeformConv3dPack,
    ModulatedDeformConv1dPack,
    ModulatedDeformConv3dPack,
    deform_conv1d,
    deform_conv3d,
)
from deformconv.nn.deform_conv import deformable_from_conv
from deformconv.ops.deform_conv.reference import deform_conv_ref
from deformconv.testing import assert_close

LAYERS = {1: (nn.Conv1d, DeformConv1d, DeformConv1dPack, ModulatedDeformConv1dPack),
          3: (nn.Conv3d, DeformConv3d, DeformConv3dPack, ModulatedDeformConv3dPack)}
SIZES = {1: (11,), 3: (5, 6, 4)}


@pytest.mark.parametrize("R", [1, 3])
def test_external_offset_layer_matches_function_and_conv_init(R):
    conv_cls, cls = LAYERS[R][:2]
    torch.manual_seed(1)
    conv = conv_cls(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, bias=True)
    torch.manual_seed(1)
    layer = cls(4, 6, 3, stride=2, padding=1, groups=2)
    assert torch.equal(layer.weight, conv.weight) and torch.equal(layer.bias, conv.bias)
    layer.load_state_dict(conv.state_dict(), strict=True)
    x = torch.randn(2, 4, *SIZES[R], dtype=torch.float64)
    layer = layer.double()
    out = conv.double()(x).shape[2:]
    off = torch.randn(2, R * 2 * 3 ** R, *out, dtype=torch.float64)
    m = torch.rand(2, 2 * 3 ** R, *out, dtype=torch.float64)
    y = layer(x, off, m)
    fn = deform_conv1d if R == 1 else deform_conv3d
    assert torch.equal(y, fn(x, off, layer.weight, layer.bias, 2, 1, 1, m))
    assert_close(y, deform_conv_ref(x, off, layer.weight, layer.bias, 2, 1, 1, m))
    assert "groups=2" in repr(layer)


@pytest.mark.parametrize("R", [1, 3])
def test_pack_layers_start_on_the_grid_with_mmcv_layout(R):
    _, _, v1, v2 = LAYERS[R]
    x = torch.randn(2, 4, *SIZES[R])
    K = 3 ** R
    a = v1(4, 6, 3, padding=1, offset_groups=2)
    b = v2(4, 6, 3, padding=1, deform_groups=2)
    assert a.conv_offset.weight.shape == (2 * R * K, 4, *(3,) * R)
    assert b.conv_offset.weight.shape == (2 * (R + 1) * K, 4, *(3,) * R)
    assert set(b.state_dict()) == {"weight", "bias", "conv_offset.weight", "conv_offset.bias"}
    conv = F.conv1d if R == 1 else F.conv3d
    assert_close(a(x), conv(x, a.weight, a.bias, padding=1))
    assert_close(b(x), 0.5 * conv(x, b.weight, None, padding=1) + b.bias.view(-1, *[1] * R))
    # v2's channels: offsets first, then mask logits.
    with torch.no_grad():
        b.conv_offset.bias[R * 2 * K:] = 3.0
    off, m = b.offset_and_mask(x)
    assert off.shape[1] == R * 2 * K and torch.all(off == 0)
    assert torch.allclose(m, torch.sigmoid(torch.tensor(3.0)).expand_as(m))
    b.reset_parameters()
    assert not b.conv_offset.bias.any()
    with pytest.raises(ValueError, match=r"input must have shape \(N, 4, "):
        b(x[:, :3])


@pytest.mark.parametrize("R", [1, 3])
@pytest.mark.parametrize("version", [1, 2])
def test_from_conv_preserves_the_function(R, version):
    conv = LAYERS[R][0](4, 6, 3, stride=(2,) * R, padding=1, groups=2).double()
    x = torch.randn(2, 4, *SIZES[R], dtype=torch.float64)
    new = deformable_from_conv(conv, version, offset_groups=2)
    assert type(new) is LAYERS[R][1 + version]
    y = new(x)
    assert_close(y, conv(x))
    y.sum().backward()
    assert new.conv_offset.weight.grad.abs().sum() > 0


def test_constructor_checks():
    with pytest.raises(ValueError, match=r"in_channels \(3\) must be divisible by groups \(2\)"):
        DeformConv3d(3, 4, 3, groups=2)
    with pytest.raises(TypeError, match="kernel_size must be an int or a tuple of 3 ints"):
        DeformConv3d(2, 4, (3, 3))
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        DeformConv1dPack(2, 4, 3, stride=2, padding="same")
    assert DeformConv3dPack(2, 4, 3, padding="same").padding == (1, 1, 1)
    with pytest.raises(ValueError, match="offset_groups must be >= 1 and divide in_channels"):
        ModulatedDeformConv1dPack(4, 4, 3, offset_groups=3)
    with pytest.raises(TypeError, match="conv must be an nn.Conv1d, nn.Conv2d or nn.Conv3d"):
        deformable_from_conv(nn.Linear(2, 2))
