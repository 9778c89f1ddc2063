"""The converter and ``deformable_from_conv`` on nn.Conv1d/nn.Conv3d: the 2-D design (weight
unscaled, converted v2 layers carry ``mask_gain = 2``), plain weights loaded afterwards keep the
plain function, and models of every dimensionality convert and train."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from deformconv import (
    DeformConv1dPack,
    DeformConv2dPack,
    DeformConv3dPack,
    ModulatedDeformConv1dPack,
    ModulatedDeformConv3dPack,
    convert_to_deformable,
)
from deformconv.nn.deform_conv import deformable_from_conv

CONV = {1: nn.Conv1d, 3: nn.Conv3d}
V2 = {1: ModulatedDeformConv1dPack, 3: ModulatedDeformConv3dPack}
V1 = {1: DeformConv1dPack, 3: DeformConv3dPack}
SIZE = {1: (13,), 3: (5, 6, 4)}


def _plain(R):
    torch.manual_seed(0)
    conv = CONV[R]
    return nn.Sequential(conv(3, 8, 3, padding=1), nn.ReLU(), conv(8, 8, 3, padding=1),
                         nn.ReLU(), conv(8, 4, 3, padding=1, bias=False)).eval()


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _changed_plain_state(R, plain):
    """A different set of plain weights (a 'pretrained checkpoint') and the model holding it."""
    torch.manual_seed(5)
    state = {k: v + 0.3 * torch.randn_like(v) for k, v in plain.state_dict().items()}
    ref = _plain(R)
    ref.load_state_dict(state)
    return state, ref


@pytest.mark.parametrize("R", [1, 3])
def test_from_conv_keeps_the_weight_and_sets_the_gain(R):
    conv = CONV[R](4, 6, 3, padding=1)
    new = deformable_from_conv(conv, 2)
    assert torch.equal(new.weight, conv.weight)
    assert float(new.state_dict()["mask_gain"]) == 2.0
    _, mask = new.offset_and_mask(torch.randn(2, 4, *SIZE[R]))
    assert torch.all(mask == 1)
    assert "mask_gain" not in deformable_from_conv(conv, 1).state_dict()
    off = deformable_from_conv(conv, 2, preserve_output=False)
    assert "mask_gain" not in off.state_dict() and torch.equal(off.weight, conv.weight)


@pytest.mark.parametrize("R", [1, 3])
@pytest.mark.parametrize("strict", [False, True])
def test_from_conv_then_plain_state_dict_is_the_plain_layer(R, strict):
    conv = CONV[R](4, 6, 3, padding=1)
    new = deformable_from_conv(conv, 2)
    torch.manual_seed(3)
    other = CONV[R](4, 6, 3, padding=1)
    result = new.load_state_dict(other.state_dict(), strict=strict)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 4, *SIZE[R])
    assert _rel(new(x), other(x)) < 1e-5


@pytest.mark.parametrize("R", [1, 3])
@pytest.mark.parametrize("strict", [False, True])
def test_convert_then_load_plain_weights_is_the_plain_function(R, strict):
    plain = _plain(R)
    state, ref = _changed_plain_state(R, plain)
    net, done = convert_to_deformable(plain, version=2, num_last=None)
    assert done == ["0", "2", "4"] and all(type(net[i]) is V2[R] for i in (0, 2, 4))
    result = net.load_state_dict(state, strict=strict)
    assert not result.unexpected_keys and not result.missing_keys
    x = torch.randn(2, 3, *SIZE[R])
    assert _rel(net(x), ref(x)) < 1e-5


@pytest.mark.parametrize("R", [1, 3])
def test_convert_after_loading_plain_weights_v1_and_v2(R):
    plain = _plain(R)
    state, ref = _changed_plain_state(R, plain)
    plain.load_state_dict(state)
    x = torch.randn(2, 3, *SIZE[R])
    for version, cls in ((1, V1[R]), (2, V2[R])):
        net, done = convert_to_deformable(plain, version=version, num_last=None, inplace=False)
        assert len(done) == 3 and type(net[2]) is cls
        assert _rel(net(x), ref(x)) < 1e-5
        net.load_state_dict(state, strict=False)
        assert _rel(net(x), ref(x)) < 1e-5


@pytest.mark.parametrize("R", [1, 3])
def test_loading_plain_weights_resets_a_trained_offset_predictor(R):
    plain = _plain(R)
    state, ref = _changed_plain_state(R, plain)
    net = nn.Sequential(*[deformable_from_conv(m, 2) if isinstance(m, CONV[R]) else m
                          for m in plain])
    with torch.no_grad():
        net[2].conv_offset.weight.normal_()
    net.load_state_dict(state, strict=True)
    assert not net[2].conv_offset.weight.any()
    x = torch.randn(2, 3, *SIZE[R])
    assert _rel(net(x), ref(x)) < 1e-5


@pytest.mark.parametrize("R", [1, 3])
def test_converted_state_dict_round_trips_also_into_direct_layers(R):
    net = nn.Sequential(*[deformable_from_conv(m, 2) if isinstance(m, CONV[R]) else m
                          for m in _plain(R)])
    with torch.no_grad():
        net[2].conv_offset.weight.normal_(std=0.1)
    x = torch.randn(2, 3, *SIZE[R])
    want = net(x)
    cls = V2[R]
    direct = nn.Sequential(cls(3, 8, 3, padding=1), nn.ReLU(), cls(8, 8, 3, padding=1),
                           nn.ReLU(), cls(8, 4, 3, padding=1, bias=False)).eval()
    direct.load_state_dict(net.state_dict())
    assert _rel(direct(x), want) < 1e-6


@pytest.mark.parametrize("R", [1, 3])
def test_mmcv_style_checkpoint_into_a_converted_layer_uses_the_plain_sigmoid(R):
    torch.manual_seed(1)
    direct = V2[R](4, 6, 3, padding=1)
    with torch.no_grad():
        direct.conv_offset.weight.normal_(std=0.1)
    converted = deformable_from_conv(CONV[R](4, 6, 3, padding=1), 2)
    converted.load_state_dict(direct.state_dict())
    assert "mask_gain" not in converted.state_dict()
    x = torch.randn(1, 4, *SIZE[R])
    torch.testing.assert_close(converted(x), direct(x))


@pytest.mark.parametrize("R", [1, 3])
def test_directly_built_v2_layer_keeps_mmcv_semantics(R):
    layer = V2[R](4, 6, 3, padding=1, bias=False)
    assert set(layer.state_dict()) == {"weight", "conv_offset.weight", "conv_offset.bias"}
    x = torch.randn(1, 4, *SIZE[R])
    _, mask = layer.offset_and_mask(x)
    assert torch.all(mask == 0.5)
    fn = nn.functional.conv1d if R == 1 else nn.functional.conv3d
    torch.testing.assert_close(layer(x), 0.5 * fn(x, layer.weight, padding=1))
    with pytest.raises(RuntimeError, match="Missing key"):
        layer.load_state_dict({"weight": layer.weight.detach()})


class _Mixed(nn.Module):
    """Convolutions of all three dimensionalities, some not eligible (no forward)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(4, 4, 3, padding=1)
        self.a1 = nn.Conv1d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv3d(4, 4, 3, padding=1)
        self.c1 = nn.Conv3d(4, 4, 1)
        self.g = nn.Conv3d(4, 4, 3, padding=1, groups=2)


def test_converter_picks_across_dimensionalities_and_logs_why(caplog):
    with caplog.at_level(logging.INFO, logger="deformconv.convert"):
        net, done = convert_to_deformable(_Mixed(), version=1, num_last=None)
    assert done == ["a", "b", "c"]
    assert (type(net.a), type(net.b), type(net.c)) == (DeformConv1dPack, DeformConv2dPack,
                                                       DeformConv3dPack)
    assert type(net.a1) is nn.Conv1d and type(net.c1) is nn.Conv3d and type(net.g) is nn.Conv3d
    log = caplog.text
    assert "skipped a1: it has a 1 kernel" in log and "skipped c1: it has a 1x1x1 kernel" in log
    assert "skipped g: it is a grouped convolution (groups=2)" in log
    assert "include_grouped" in log
    _, done = convert_to_deformable(_Mixed(), num_last=2)
    assert done == ["b", "c"]
    _, done = convert_to_deformable(_Mixed(), num_last=None, include_grouped=True)
    assert done == ["a", "b", "c", "g"]
    net, done = convert_to_deformable(_Mixed(), names=["g", "a"])
    assert done == ["g", "a"] and type(net.a) is ModulatedDeformConv1dPack
    _, done = convert_to_deformable(_Mixed(), num_last=None,
                                    filter=lambda n, m: not isinstance(m, nn.Conv2d))
    assert done == ["a", "c"]
    with pytest.raises(ValueError, match="names: module 'c1' cannot be converted: it has a "
                                         "1x1x1 kernel"):
        convert_to_deformable(_Mixed(), names=["c1"])


@pytest.mark.parametrize("R", [1, 3])
def test_a_converted_model_trains_one_step(R):
    torch.manual_seed(2)
    conv = CONV[R]
    net = nn.Sequential(conv(2, 6, 3, padding=1), nn.ReLU(), conv(6, 6, 3, padding=1),
                        nn.ReLU(), conv(6, 3, 1))
    x = torch.randn(2, 2, *SIZE[R])
    target = torch.randn(2, 3, *SIZE[R])
    before = net(x).detach()
    net, done = convert_to_deformable(net, version=2, num_last=2)
    assert done == ["0", "2"] and type(net[2]) is V2[R]
    assert _rel(net(x), before) < 1e-5
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = nn.functional.mse_loss(net(x), target)
    loss.backward()
    assert net[2].conv_offset.weight.grad.abs().sum() > 0
    assert net[2].conv_offset.bias.grad[-3 ** R:].abs().sum() > 0  # the mask logits learn
    opt.step()
    after = nn.functional.mse_loss(net(x), target)
    assert after.item() < loss.item()
    assert net[2].conv_offset.weight.abs().sum() > 0


@pytest.mark.parametrize("R", [1, 3])
def test_padding_same_and_valid_convert(R):
    """1-D/3-D convolutions with padding='same' (odd kernel, dilation 2) and 'valid' convert
    and keep their function; a frozen one gets a frozen offset predictor."""
    torch.manual_seed(0)
    net = nn.Sequential(CONV[R](3, 4, 3, padding="same", dilation=2),
                        CONV[R](4, 2, 3, padding="valid")).double()
    net[1].requires_grad_(False)
    x = torch.randn(2, 3, *(7,) * R, dtype=torch.float64)
    before = net(x)
    net, done = convert_to_deformable(net, version=2)
    assert done == ["0", "1"] and type(net[0]) is V2[R] and net[0].padding == (2,) * R
    torch.testing.assert_close(net(x), before, rtol=1e-12, atol=1e-12)
    assert net[0].conv_offset.weight.requires_grad
    assert not any(p.requires_grad for p in net[1].parameters())
