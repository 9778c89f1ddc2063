"""Loading weights into converted models, for every dimensionality R: plain weights loaded
after conversion keep the plain function (weight unscaled, converted v2 layers carry
``mask_gain = 2``), a trained offset predictor is reset by plain weights, converted state dicts
round-trip, mmcv-style checkpoints keep mmcv's semantics. Then the converter's choices on 2-D
models: counting from the right end, grouped convolutions left alone unless asked."""

import logging

import pytest
import torch
from torch import nn

import deformconv
from deformconv import convert_to_deformable
from deformconv.nn.deform_conv import deformable_from_conv

R_ALL = [1, 2, 3]
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
FCONV = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}
SIZE = {1: (13,), 2: (9, 10), 3: (5, 6, 4)}


def _v1(R):
    return getattr(deformconv, f"DeformConv{R}dPack")


def _v2(R):
    return getattr(deformconv, f"ModulatedDeformConv{R}dPack")


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


@pytest.mark.parametrize("R", R_ALL)
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


@pytest.mark.parametrize("R", R_ALL)
@pytest.mark.parametrize("strict", [False, True])
def test_convert_then_load_plain_weights_is_the_plain_function(R, strict):
    plain = _plain(R)
    state, ref = _changed_plain_state(R, plain)
    net, done = convert_to_deformable(plain, version=2, num_last=None)
    assert done == ["0", "2", "4"] and all(type(net[i]) is _v2(R) for i in (0, 2, 4))
    result = net.load_state_dict(state, strict=strict)
    assert not result.unexpected_keys and not result.missing_keys
    x = torch.randn(2, 3, *SIZE[R])
    assert _rel(net(x), ref(x)) < 1e-5


@pytest.mark.parametrize("R", R_ALL)
def test_convert_after_loading_plain_weights_v1_and_v2(R):
    plain = _plain(R)
    state, ref = _changed_plain_state(R, plain)
    plain.load_state_dict(state)
    x = torch.randn(2, 3, *SIZE[R])
    for version, cls in ((1, _v1(R)), (2, _v2(R))):
        net, done = convert_to_deformable(plain, version=version, num_last=None, inplace=False)
        assert len(done) == 3 and type(net[2]) is cls
        assert _rel(net(x), ref(x)) < 1e-5
        net.load_state_dict(state, strict=False)
        assert _rel(net(x), ref(x)) < 1e-5


@pytest.mark.parametrize("R", R_ALL)
@pytest.mark.parametrize("strict", [False, True])
def test_loading_plain_weights_resets_a_trained_offset_predictor(R, strict):
    plain = _plain(R)
    state, ref = _changed_plain_state(R, plain)
    net, _ = convert_to_deformable(plain, version=2, num_last=None)
    with torch.no_grad():
        for i in (0, 2, 4):
            net[i].conv_offset.weight.normal_()
    net.load_state_dict(state, strict=strict)
    assert not any(net[i].conv_offset.weight.any() for i in (0, 2, 4))
    x = torch.randn(2, 3, *SIZE[R])
    assert _rel(net(x), ref(x)) < 1e-5


@pytest.mark.parametrize("R", R_ALL)
def test_converted_state_dict_round_trips_and_keeps_its_function(R):
    net, _ = convert_to_deformable(_plain(R), version=2, num_last=None)
    with torch.no_grad():
        net[2].conv_offset.weight.normal_(std=0.1)
    x = torch.randn(2, 3, *SIZE[R])
    want = net(x)
    # Into a freshly converted model, and into directly built layers (mmcv-style model code).
    again, _ = convert_to_deformable(_plain(R), version=2, num_last=None)
    again.load_state_dict(net.state_dict())
    assert _rel(again(x), want) < 1e-6
    cls = _v2(R)
    direct = nn.Sequential(cls(3, 8, 3, padding=1), nn.ReLU(), cls(8, 8, 3, padding=1),
                           nn.ReLU(), cls(8, 4, 3, padding=1, bias=False)).eval()
    direct.load_state_dict(net.state_dict())
    assert _rel(direct(x), want) < 1e-6


@pytest.mark.parametrize("R", R_ALL)
def test_mmcv_checkpoint_into_a_converted_layer_uses_mmcv_semantics(R):
    torch.manual_seed(1)
    mmcv_like = _v2(R)(4, 6, 3, padding=1)
    with torch.no_grad():
        mmcv_like.conv_offset.weight.normal_(std=0.1)
    converted, _ = convert_to_deformable(CONV[R](4, 6, 3, padding=1), version=2,
                                         inplace=False)
    converted.load_state_dict(mmcv_like.state_dict())
    assert "mask_gain" not in converted.state_dict()  # the plain sigmoid of mmcv
    x = torch.randn(1, 4, *SIZE[R])
    torch.testing.assert_close(converted(x), mmcv_like(x))


@pytest.mark.parametrize("R", R_ALL)
def test_directly_built_v2_layer_keeps_mmcv_semantics(R):
    layer = _v2(R)(4, 6, 3, padding=1, bias=False)
    assert set(layer.state_dict()) == {"weight", "conv_offset.weight", "conv_offset.bias"}
    x = torch.randn(1, 4, *SIZE[R])
    _, mask = layer.offset_and_mask(x)
    assert torch.all(mask == 0.5)
    torch.testing.assert_close(layer(x), 0.5 * FCONV[R](x, layer.weight, padding=1))
    with pytest.raises(RuntimeError, match="Missing key"):
        layer.load_state_dict({"weight": layer.weight.detach()})


@pytest.mark.parametrize("num_last,want", [(3, ["0", "2"]), (2, ["0", "2"]), (1, ["2"]),
                                           (5, ["0", "2"]), (0, [])])
def test_num_last_larger_than_the_eligible_count_converts_all(num_last, want):
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    _, done = convert_to_deformable(net, num_last=num_last)
    assert done == want


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
