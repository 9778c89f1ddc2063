"""DCNv3/DCNv4 layers reject bad constructor arguments and inputs with a ValueError/TypeError
naming the argument, the expected and the actual value, before any internal layer fails."""

from __future__ import annotations

import warnings

import pytest
import torch

from deformconv import DCNv3, DCNv4

LAYERS = [DCNv3, DCNv4]


def test_dcnv3_rejects_channels_first_input():
    m = DCNv3(64, group=4)
    with pytest.raises(ValueError, match=r"input must be channels last \(N, H, W, C\) with C = "
                                         r"channels = 64, got shape \(2, 64, 10, 12\)"):
        m(torch.randn(2, 64, 10, 12))
    with pytest.raises(ValueError, match=r"input must be .*got shape \(10, 12, 64\)"):
        m(torch.randn(10, 12, 64))
    with pytest.raises(TypeError, match="input must be a Tensor, got list"):
        m([1.0])


def test_dcnv4_rejects_4d_input():
    m = DCNv4(64, group=4)
    with pytest.raises(ValueError, match=r"input must be \(N, L, C\) .*C = channels = 64, got "
                                         r"shape \(2, 10, 12, 64\)"):
        m(torch.randn(2, 10, 12, 64))
    with pytest.raises(ValueError, match=r"C = channels = 64, got shape \(2, 100, 32\)"):
        m(torch.randn(2, 100, 32))


def test_dcnv4_non_square_length_needs_shape():
    m = DCNv4(64, group=4)
    with pytest.raises(ValueError, match=r"L = 120 is not a square: pass shape=\(H, W\)"):
        m(torch.randn(2, 120, 64))
    with pytest.raises(TypeError, match=r"shape must be a pair of ints \(H, W\), got 120"):
        m(torch.randn(2, 120, 64), shape=120)
    with pytest.raises(ValueError, match=r"shape \(H, W\) = \(-10, -12\) must have"):
        m(torch.randn(2, 120, 64), shape=(-10, -12))
    assert m(torch.randn(2, 120, 64), shape=(10, 12)).shape == (2, 120, 64)
    assert m(torch.randn(2, 100, 64)).shape == (2, 100, 64)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(stride=2), ValueError, r"stride must be 1 .*got 2"),
    (dict(stride=0), ValueError, r"stride must be >= 1, got 0"),
    (dict(channels=-64), ValueError, r"channels must be >= 1, got -64"),
    (dict(channels=64.0), TypeError, r"channels must be an int, got 64.0"),
    (dict(group=0), ValueError, r"group must be >= 1, got 0"),
    (dict(group=5), ValueError, r"channels \(64\) must be divisible by group \(5\)"),
    (dict(kernel_size=0), ValueError, r"kernel_size must be >= 1, got 0"),
    (dict(kernel_size=5), ValueError, r"pad must be dilation\*\(kernel_size-1\)/2 = "
                                      r"1\*\(5-1\)/2 .*got pad=1"),
    (dict(dilation=0), ValueError, r"dilation must be >= 1, got 0"),
    (dict(dilation=2), ValueError, r"pad must be .*got pad=1"),
    (dict(pad=-1), ValueError, r"pad must be >= 0, got -1"),
    (dict(pad="1"), TypeError, r"pad must be an int, got '1'"),
    (dict(dw_kernel_size=4), ValueError, r"dw_kernel_size must be odd .*got 4"),
    (dict(dw_kernel_size=0), ValueError, r"dw_kernel_size must be >= 1, got 0"),
    (dict(offset_scale=float("nan")), ValueError, r"offset_scale must be finite, got nan"),
    (dict(offset_scale="1"), TypeError, r"offset_scale must be a float, got '1'"),
    (dict(remove_center=2), TypeError, r"remove_center must be a bool, got 2"),
    (dict(center_feature_scale="yes"), TypeError,
     r"center_feature_scale must be a bool, got 'yes'"),
    (dict(kernel_size=1, pad=0, remove_center=True), ValueError,
     r"remove_center needs kernel_size >= 3"),
])
def test_bad_constructor_arguments(layer, kwargs, error, pattern):
    kwargs = {"channels": 64, "group": 4, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no power-of-2 warning before the error
        with pytest.raises(error, match=pattern):
            layer(**kwargs)


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(norm_layer="GN"), ValueError, "norm_layer must be 'LN' or 'BN', got 'GN'"),
    (dict(norm_layer=["LN"]), ValueError, r"norm_layer must be 'LN' or 'BN', got \['LN'\]"),
    (dict(act_layer="Tanh"), ValueError, r"act_layer must be one of .*got 'Tanh'"),
    (dict(act_layer=None), ValueError, r"act_layer must be one of .*got None"),
])
def test_dcnv3_bad_layers(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        DCNv3(64, group=4, **kwargs)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(output_bias="no"), r"output_bias must be a bool, got 'no'"),
    (dict(without_pointwise=None), r"without_pointwise must be a bool, got None"),
])
def test_dcnv4_bad_flags(kwargs, pattern):
    with pytest.raises(TypeError, match=pattern):
        DCNv4(64, group=4, **kwargs)


@pytest.mark.parametrize("layer", LAYERS)
def test_valid_arguments_still_accepted(layer):
    for kw in (dict(kernel_size=5, pad=2), dict(dilation=2, pad=2), dict(kernel_size=1, pad=0),
               dict(dw_kernel_size=5), dict(remove_center=True), dict(offset_scale=2)):
        m = layer(16, group=2, **kw)
        x = torch.randn(1, 6, 6, 16) if layer is DCNv3 else torch.randn(1, 36, 16)
        assert m(x).shape == x.shape
