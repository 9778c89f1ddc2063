"""The converter counts from the right end, leaves grouped convolutions alone unless asked, and a
converted v2 model still computes the plain model's function after plain weights are loaded."""

import logging

import pytest
import torch
from torch import nn

from deformconv import ModulatedDeformConv2dPack, convert_to_deformable


def _plain():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1, bias=False)).eval()


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("num_last,want", [(3, ["0", "2"]), (2, ["0", "2"]), (1, ["2"]),
                                           (5, ["0", "2"]), (0, [])])
def test_num_last_larger_than_the_eligible_count_converts_all(num_last, want):
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    _, done = convert_to_deformable(net, num_last=num_last)
    assert done == want


def _changed_plain_state(plain):
    """A different set of plain weights (a 'pretrained checkpoint')."""
    state = {k: v + 0.3 * torch.randn_like(v) for k, v in plain.state_dict().items()}
    ref = _plain()
    ref.load_state_dict(state)
    return state, ref


@pytest.mark.parametrize("strict", [False, True])
def test_convert_then_load_plain_weights_is_the_plain_function(strict):
    plain = _plain()
    state, ref = _changed_plain_state(plain)
    net, done = convert_to_deformable(plain, version=2, num_last=None)
    assert len(done) == 3
    result = net.load_state_dict(state, strict=strict)
    assert not result.unexpected_keys
    x = torch.randn(2, 3, 9, 10)
    assert _rel(net(x), ref(x)) < 1e-5


def test_convert_after_loading_plain_weights_and_v1():
    plain = _plain()
    state, ref = _changed_plain_state(plain)
    plain.load_state_dict(state)
    x = torch.randn(2, 3, 9, 10)
    for version in (1, 2):
        net, _ = convert_to_deformable(plain, version=version, num_last=None, inplace=False)
        assert _rel(net(x), ref(x)) < 1e-5
        net.load_state_dict(state, strict=False)
        assert _rel(net(x), ref(x)) < 1e-5


def test_loading_plain_weights_resets_a_trained_offset_predictor():
    plain = _plain()
    state, ref = _changed_plain_state(plain)
    net, _ = convert_to_deformable(plain, version=2, num_last=None)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ModulatedDeformConv2dPack):
                m.conv_offset.weight.normal_()
    net.load_state_dict(state, strict=False)
    x = torch.randn(2, 3, 9, 10)
    assert _rel(net(x), ref(x)) < 1e-5


def test_converted_state_dict_round_trips_and_keeps_its_function():
    net, _ = convert_to_deformable(_plain(), version=2, num_last=None)
    with torch.no_grad():
        net[2].conv_offset.weight.normal_(std=0.1)
    x = torch.randn(2, 3, 9, 10)
    want = net(x)
    # Into a freshly converted model, and into directly built layers (mmcv-style model code).
    again, _ = convert_to_deformable(_plain(), version=2, num_last=None)
    again.load_state_dict(net.state_dict())
    assert _rel(again(x), want) < 1e-6
    direct = nn.Sequential(ModulatedDeformConv2dPack(3, 8, 3, padding=1), nn.ReLU(),
                           ModulatedDeformConv2dPack(8, 8, 3, padding=1), nn.ReLU(),
                           ModulatedDeformConv2dPack(8, 4, 3, padding=1, bias=False)).eval()
    direct.load_state_dict(net.state_dict())
    assert _rel(direct(x), want) < 1e-6


def test_mmcv_checkpoint_into_a_converted_layer_uses_mmcv_semantics():
    torch.manual_seed(1)
    mmcv_like = ModulatedDeformConv2dPack(4, 6, 3, padding=1)
    with torch.no_grad():
        mmcv_like.conv_offset.weight.normal_(std=0.1)
    converted, _ = convert_to_deformable(nn.Conv2d(4, 6, 3, padding=1), version=2,
                                         inplace=False)
    converted.load_state_dict(mmcv_like.state_dict())
    x = torch.randn(1, 4, 7, 7)
    torch.testing.assert_close(converted(x), mmcv_like(x))


def test_directly_built_v2_layer_keeps_mmcv_semantics():
    layer = ModulatedDeformConv2dPack(4, 6, 3, padding=1, bias=False)
    assert set(layer.state_dict()) == {"weight", "conv_offset.weight", "conv_offset.bias"}
    x = torch.randn(1, 4, 7, 7)
    _, mask = layer.offset_and_mask(x)
    assert torch.all(mask == 0.5)
    torch.testing.assert_close(layer(x), 0.5 * nn.functional.conv2d(x, layer.weight, padding=1))
    with pytest.raises(RuntimeError, match="Missing key"):
        layer.load_state_dict({"weight": layer.weight.detach()})


def _convnext_like():
    return nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), nn.Conv2d(16, 16, 7, padding=3, groups=16),
                         nn.Conv2d(16, 32, 1), nn.Conv2d(32, 32, 3, padding=1, groups=2),
                         nn.Conv2d(32, 32, 3, padding=1))


def test_grouped_convolutions_are_skipped_by_default_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="deformconv.convert"):
        _, done = convert_to_deformable(_convnext_like(), num_last=None)
    assert done == ["0", "4"]
    log = caplog.text
    assert "1" in log and "depthwise" in log and "include_grouped" in log
    assert "groups=2" in log and "1x1" in log
    with caplog.at_level(logging.INFO, logger="deformconv.convert"):
        convert_to_deformable(_convnext_like(), num_last=1)
    assert "skipped 0: not among the last num_last=1" in caplog.text


def test_grouped_convolutions_on_request():
    net = _convnext_like()
    x = torch.randn(1, 3, 16, 16)
    want = net(x)
    _, done = convert_to_deformable(net, num_last=None, include_grouped=True)
    assert done == ["0", "1", "3", "4"] and net[1].groups == 16
    assert _rel(net(x), want) < 1e-5
