"""Every deformable convolution layer, of every dimensionality, accepts what nn.Conv{R}d accepts
and has the same features: unbatched input, 'same' padding with even kernels, NumPy integers,
mmcv's positional order, a repr of public class names, ``from_conv``."""

import numpy as np
import pytest
import torch
from torch import nn

import deformconv

R_ALL = [1, 2, 3]
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
SIZE = {1: (9,), 2: (7, 8), 3: (5, 6, 4)}


def _classes(R):
    return (getattr(deformconv, f"DeformConv{R}d"), getattr(deformconv, f"DeformConv{R}dPack"),
            getattr(deformconv, f"ModulatedDeformConv{R}dPack"))


def _packs(R):
    return _classes(R)[1:]


@pytest.mark.parametrize("R", R_ALL)
@pytest.mark.parametrize("v", [0, 1])
def test_unbatched_input(R, v):
    layer = _packs(R)[v](4, 6, 3, padding=1)
    x = torch.randn(4, *SIZE[R])
    y = layer(x)
    assert y.shape == (6, *SIZE[R])
    torch.testing.assert_close(y, layer(x[None])[0])
    off, mask = layer.offset_and_mask(x)
    assert off.dim() == R + 1


@pytest.mark.parametrize("R", R_ALL)
def test_unbatched_input_with_explicit_offsets(R):
    layer = _classes(R)[0](4, 6, 3)
    out = [s - 2 for s in SIZE[R]]
    x, off, mask = torch.randn(4, *SIZE[R]), torch.randn(R * 3 ** R, *out), torch.rand(3 ** R, *out)
    y = layer(x, off, mask)
    assert y.shape == (6, *out)
    torch.testing.assert_close(y, layer(x[None], off[None], mask[None])[0])


@pytest.mark.parametrize("R", R_ALL)
def test_unbatched_error_reports_the_shape_given(R):
    """A batched offset with an unbatched input: the error shows the offset as passed."""
    layer = _classes(R)[0](1, 1, 3)
    out = [s - 2 for s in SIZE[R]]
    off = torch.zeros(1, R * 3 ** R, *out)
    shape = str(tuple(off.shape)).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"offset must be {R + 1}-D .*got shape {shape}"):
        layer(torch.randn(1, *SIZE[R]), off)


@pytest.mark.parametrize("R", R_ALL)
@pytest.mark.parametrize("k,d", [(2, 1), (4, 1), (4, 3)])
def test_same_padding_with_even_kernels_matches_conv(R, k, d):
    torch.manual_seed(0)
    conv = CONV[R](3, 5, k, padding="same", dilation=d)
    x = torch.randn(2, 3, *SIZE[R])
    for cls in _classes(R):
        layer = cls(3, 5, k, padding="same", dilation=d)
        layer.weight.data.copy_(conv.weight)
        layer.bias.data.copy_(conv.bias)
        b = conv.bias.view(-1, *[1] * R)
        if cls is _classes(R)[0]:
            y = layer(x, torch.zeros(2, R * k ** R, *SIZE[R]))
        else:
            y = layer(x)
            if cls is _classes(R)[2]:
                y = 2 * (y - b) + b
        assert y.shape == (2, 5, *SIZE[R])
        torch.testing.assert_close(y, conv(x), atol=1e-5, rtol=1e-5)
        assert "padding='same'" in repr(layer)


@pytest.mark.parametrize("R", R_ALL)
def test_numpy_integers(R):
    layer = _packs(R)[0](np.int64(4), np.int32(6), np.int64(3), stride=np.int64(1),
                         padding=np.int64(1), dilation=(np.int64(1),) * R, groups=np.int64(2),
                         offset_groups=np.int64(2))
    assert layer(torch.randn(1, 4, *SIZE[R])).shape == (1, 6, *SIZE[R])
    assert type(layer.in_channels) is int and type(layer.offset_groups) is int


@pytest.mark.parametrize("R", R_ALL)
@pytest.mark.parametrize("v", [0, 1])
def test_repr_names_public_classes(R, v):
    text = repr(_packs(R)[v](4, 6, 3, padding=1))
    assert "_ZeroInit" not in text and f"Conv{R}d(" in text
    assert f"(conv_offset): Conv{R}d(4" in text


@pytest.mark.parametrize("R", R_ALL)
def test_positional_order_is_mmcvs_for_every_dimensionality(R):
    """(in, out, kernel, stride, padding, dilation, groups, offset_groups, bias)."""
    for cls in _packs(R):
        layer = cls(8, 8, 3, 1, 1, 1, 1, 2)
        assert layer.offset_groups == 2 and layer.bias is not None
        assert cls(8, 8, 3, 1, 1, 1, 1, 2, False).bias is None
    with pytest.raises(TypeError, match="bias must be a bool, got 2"):
        _packs(R)[0](8, 8, 3, 1, 1, 1, 1, 1, 2)
    with pytest.raises(TypeError, match="bias must be a bool"):
        _classes(R)[0](8, 8, 3, bias=2)


@pytest.mark.parametrize("R", R_ALL)
def test_explicit_offset_groups_conflicting_with_deform_groups(R):
    cls = _packs(R)[0]
    with pytest.raises(ValueError, match="disagree"):
        cls(4, 4, 3, offset_groups=1, deform_groups=2)
    assert cls(4, 4, 3, deform_groups=2).offset_groups == 2
    assert cls(4, 4, 3, offset_groups=2, deform_groups=2).offset_groups == 2


@pytest.mark.parametrize("R", R_ALL)
@pytest.mark.parametrize("v", [0, 1])
def test_from_conv_for_every_dimensionality(R, v):
    conv = CONV[R](4, 6, 3, stride=2, padding=1, groups=2).double()
    x = torch.randn(2, 4, *SIZE[R], dtype=torch.float64)
    new = _packs(R)[v].from_conv(conv, offset_groups=2)
    assert type(new) is _packs(R)[v] and new.offset_groups == 2
    torch.testing.assert_close(new(x), conv(x))
    with pytest.raises(TypeError, match=f"conv must be an nn.Conv{R}d"):
        _packs(R)[v].from_conv(CONV[1 if R != 1 else 2](4, 6, 3))
