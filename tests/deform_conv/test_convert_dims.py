"""The converter and ``deformable_from_conv`` on convolutions of every dimensionality R: the
weight is kept and converted v2 layers carry ``mask_gain = 2``, models of mixed dimensionality
convert (with the reasons for what is skipped logged), converted models train, padding
'same'/'valid' convert. Loading weights into converted models: test_convert_loading.py."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import deformconv
from deformconv import (
    DeformConv1dPack,
    DeformConv2dPack,
    DeformConv3dPack,
    ModulatedDeformConv1dPack,
    convert_to_deformable,
)
from deformconv.nn.deform_conv import deformable_from_conv

R_ALL = [1, 2, 3]
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
V2 = {R: getattr(deformconv, f"ModulatedDeformConv{R}dPack") for R in R_ALL}
SIZE = {1: (13,), 2: (9, 10), 3: (5, 6, 4)}


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("R", R_ALL)
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


@pytest.mark.parametrize("R", R_ALL)
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


@pytest.mark.parametrize("R", R_ALL)
def test_padding_same_and_valid_convert(R):
    """Convolutions with padding='same' (odd kernel, dilation 2) and 'valid' convert
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
