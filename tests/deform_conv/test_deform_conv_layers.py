"""The layers: torchvision's DeformConv2d interface and the self-offsetting v1/v2 layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deformconv import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack, deform_conv2d
from deformconv.ops.deform_conv.reference import deform_conv_ref
from deformconv.testing import Problem, assert_close


def test_deform_conv2d_layer_matches_function():
    layer = DeformConv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    assert layer.weight.shape == (6, 2, 3, 2) and layer.bias.shape == (6,)
    p = Problem(N=2, C=4, O=6, size=(9, 8), kernel=(3, 2), stride=(2, 1), padding=(1, 0),
                dilation=(1, 2), groups=2, offset_scale=1.0)
    t = p.tensors(torch.float32)
    x, off, m = t["input"], t["offset"], t["mask"]
    y = layer(x, off, m)
    assert torch.equal(y, deform_conv2d(x, off, layer.weight, layer.bias, (2, 1), (1, 0),
                                        (1, 2), m))
    assert_close(y, deform_conv_ref(x.double(), off.double(), layer.weight.double(),
                                      layer.bias.double(), (2, 1), (1, 0), (1, 2), m.double()),
                 name="output")


def test_parameters_like_conv2d():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False)
    torch.manual_seed(1)
    layer = DeformConv2d(4, 6, 3, padding=1, groups=2, bias=False)
    assert layer.bias is None
    # Same shapes, names and initialisation: state dicts move both ways.
    assert torch.equal(layer.weight, conv.weight)
    layer.load_state_dict(conv.state_dict(), strict=True)
    assert "groups=2" in repr(layer) and "bias=False" in repr(layer)


def test_factory_keywords():
    layer = ModulatedDeformConv2dPack(4, 4, 3, padding=1, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    assert layer(torch.randn(1, 4, 5, 5, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("groups,offset_groups", [(1, 1), (2, 1), (1, 3), (3, 2)])
def test_v1_new_layer_equals_conv2d(groups, offset_groups):
    C = 6
    layer = DeformConv2dPack(C, 6, 3, stride=(1, 2), padding=(2, 1), dilation=(2, 1),
                             groups=groups, offset_groups=offset_groups)
    assert layer.conv_offset.out_channels == 2 * offset_groups * 9
    x = torch.randn(2, C, 9, 8)
    want = F.conv2d(x, layer.weight, layer.bias, (1, 2), (2, 1), (2, 1), groups)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


def test_v2_new_layer_is_half_conv_plus_bias():
    layer = ModulatedDeformConv2dPack(4, 5, 3, padding=1, offset_groups=2)
    assert layer.conv_offset.out_channels == 3 * 2 * 9
    x = torch.randn(2, 4, 7, 6)
    want = 0.5 * F.conv2d(x, layer.weight, None, padding=1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


def test_v2_channel_routing_follows_mmcv():
    layer = ModulatedDeformConv2dPack(2, 3, 3, padding=1).double()
    torch.nn.init.normal_(layer.conv_offset.weight, std=0.5)
    torch.nn.init.normal_(layer.conv_offset.bias, std=0.5)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    # mmcv: o1, o2, mask = chunk(conv_offset(x), 3); offset = cat(o1, o2); mask = sigmoid(mask)
    o1, o2, logits = torch.chunk(layer.conv_offset(x), 3, dim=1)
    want = deform_conv_ref(x, torch.cat([o1, o2], 1), layer.weight, layer.bias, 1, 1, 1,
                             torch.sigmoid(logits))
    assert_close(layer(x), want, name="output")


@pytest.mark.parametrize("cls", [DeformConv2dPack, ModulatedDeformConv2dPack])
def test_gradients_reach_offset_predictor(cls):
    layer = cls(4, 4, 3, padding=1, offset_groups=2)
    x = torch.randn(2, 4, 6, 6)
    layer(x).square().sum().backward()
    for p in (layer.weight, layer.bias, layer.conv_offset.weight, layer.conv_offset.bias):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_layer_rejects_bad_groups():
    with pytest.raises(ValueError, match=r"in_channels \(5\) must be divisible by groups \(2\)"):
        DeformConv2d(5, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"offset_groups must be >= 1 and divide in_channels "
                                         r"\(4\), got 3"):
        DeformConv2dPack(4, 4, 3, offset_groups=3)


@pytest.mark.parametrize("kwargs,exc,pattern", [
    (dict(padding="full"), ValueError, r"padding must be an int, a pair of ints, 'valid' or "
                                       r"'same', got 'full'"),
    (dict(padding=-1), ValueError, r"padding must be >= 0, got -1"),
    (dict(padding=(1, 2, 3)), TypeError, r"padding must be an int or a pair of ints"),
    (dict(stride=True), TypeError, r"stride must be an int or a pair of ints, got True"),
    (dict(stride=1.5), TypeError, r"stride must be an int or a pair of ints, got 1.5"),
    (dict(kernel_size=0), ValueError, r"kernel_size must be >= 1, got 0"),
    (dict(kernel_size=(3, 3, 3)), TypeError, r"kernel_size must be an int or a pair"),
    (dict(in_channels=0), ValueError, r"in_channels must be >= 1, got 0"),
    (dict(out_channels=0), ValueError, r"out_channels must be >= 1, got 0"),
    (dict(groups=0), ValueError, r"groups must be >= 1, got 0"),
    (dict(padding="same", stride=2), ValueError, r"padding='same' needs stride 1"),
])
@pytest.mark.parametrize("cls", [DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack])
def test_constructor_rejects_bad_arguments(cls, kwargs, exc, pattern):
    args = dict(in_channels=4, out_channels=6, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        cls(**args)


def test_valid_and_same_padding_like_conv2d():
    for padding, dilation in (("same", 1), ("same", 2), ("valid", 1)):
        layer = DeformConv2dPack(4, 6, 3, padding=padding, dilation=dilation)
        conv = torch.nn.Conv2d(4, 6, 3, padding=padding, dilation=dilation)
        x = torch.randn(1, 4, 9, 8)
        conv.load_state_dict({"weight": layer.weight, "bias": layer.bias})
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [DeformConv2dPack, ModulatedDeformConv2dPack])
def test_every_reinitialisation_starts_on_the_regular_grid(cls):
    # Meta device then to_empty, then reset_parameters on the layer or on every submodule.
    for reset_all in (False, True):
        layer = cls(4, 4, 3, padding=1, device="meta").to_empty(device="cpu")
        if reset_all:
            layer.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters")
                        else None)
        else:
            layer.reset_parameters()
        assert torch.equal(layer.conv_offset.weight, torch.zeros_like(layer.conv_offset.weight))
        assert torch.equal(layer.conv_offset.bias, torch.zeros_like(layer.conv_offset.bias))
        x = torch.randn(1, 4, 6, 6)
        scale = 0.5 if cls is ModulatedDeformConv2dPack else 1.0
        want = scale * F.conv2d(x, layer.weight, None, padding=1) + layer.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    # A trained-looking predictor is zeroed again by reset_parameters.
    layer = cls(4, 4, 3, padding=1)
    torch.nn.init.ones_(layer.conv_offset.weight)
    layer.reset_parameters()
    assert layer.conv_offset.weight.abs().max() == 0


@pytest.mark.parametrize("cls", [DeformConv2dPack, ModulatedDeformConv2dPack])
def test_pack_layers_check_their_input(cls):
    layer = cls(4, 6, 3, padding=1)
    with pytest.raises(ValueError, match=r"input must have shape \(N, 4, H, W\) or "
                                         r"\(4, H, W\), got \(1, 5, 8, 8\)"):
        layer(torch.randn(1, 5, 8, 8))
    with pytest.raises(TypeError, match=r"input must be a Tensor, got list"):
        layer([1.0])
