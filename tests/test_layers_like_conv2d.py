"""The layers accept what nn.Conv2d accepts: unbatched input, 'same' padding with even kernels,
NumPy integers; their repr names public classes only."""

import numpy as np
import pytest
import torch
from torch import nn

from deformconv import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack

PACKS = [DeformConv2dPack, ModulatedDeformConv2dPack]


@pytest.mark.parametrize("cls", PACKS)
def test_unbatched_input(cls):
    layer = cls(4, 6, 3, padding=1)
    x = torch.randn(4, 7, 8)
    y = layer(x)
    assert y.shape == (6, 7, 8)
    torch.testing.assert_close(y, layer(x[None])[0])


def test_unbatched_input_with_explicit_offsets():
    layer = DeformConv2d(4, 6, 3)
    x, off, mask = torch.randn(4, 7, 8), torch.randn(18, 5, 6), torch.rand(9, 5, 6)
    y = layer(x, off, mask)
    assert y.shape == (6, 5, 6)
    torch.testing.assert_close(y, layer(x[None], off[None], mask[None])[0])


@pytest.mark.parametrize("k,d", [(2, 1), (4, 1), ((2, 3), (1, 2)), (4, 3)])
def test_same_padding_with_even_kernels_matches_conv2d(k, d):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, k, padding="same", dilation=d)
    x = torch.randn(2, 3, 9, 8)
    for cls in PACKS + [DeformConv2d]:
        layer = cls(3, 5, k, padding="same", dilation=d)
        layer.weight.data.copy_(conv.weight)
        layer.bias.data.copy_(conv.bias)
        if cls is DeformConv2d:
            kh, kw = layer.kernel_size
            y = layer(x, torch.zeros(2, 2 * kh * kw, 9, 8))
        else:
            y = layer(x)
            if cls is ModulatedDeformConv2dPack:
                y = 2 * (y - conv.bias[:, None, None]) + conv.bias[:, None, None]
        assert y.shape == (2, 5, 9, 8)
        torch.testing.assert_close(y, conv(x), atol=1e-5, rtol=1e-5)


def test_numpy_integers():
    layer = DeformConv2dPack(np.int64(4), np.int32(6), np.int64(3), stride=np.int64(1),
                             padding=np.int64(1), dilation=(np.int64(1), 1), groups=np.int64(2),
                             offset_groups=np.int64(2))
    assert layer(torch.randn(1, 4, 5, 5)).shape == (1, 6, 5, 5)
    assert type(layer.in_channels) is int and type(layer.offset_groups) is int


@pytest.mark.parametrize("cls", PACKS)
def test_repr_names_public_classes(cls):
    text = repr(cls(4, 6, 3, padding=1))
    assert "_ZeroInit" not in text and "Conv2d(" in text
    assert "(conv_offset): Conv2d(4" in text
