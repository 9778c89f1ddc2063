"""Drop-in for mmcv's DeformConv2dPack/ModulatedDeformConv2dPack: positional order, the
im2col_step knob, and old checkpoints whose offset predictor is a sibling `<name>_offset`."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from deformconv import DeformConv2dPack, ModulatedDeformConv2dPack


@pytest.mark.parametrize("cls", [DeformConv2dPack, ModulatedDeformConv2dPack])
def test_positional_order_is_mmcv(cls):
    # (in, out, kernel_size, stride, padding, dilation, groups, deform_groups, bias)
    layer = cls(16, 32, 3, 1, 1, 1, 1, 2)
    assert layer.offset_groups == 2
    per = 3 if cls is ModulatedDeformConv2dPack else 2
    assert layer.conv_offset.out_channels == 2 * per * 9
    layer = cls(16, 32, 3, 1, 1, 1, 2, 4, False)
    assert layer.groups == 2 and layer.offset_groups == 4 and layer.bias is None
    # keywords unchanged
    layer = cls(16, 32, 3, padding=1, offset_groups=2, bias=False)
    assert layer.offset_groups == 2 and layer.bias is None
    assert cls(16, 32, 3, deform_groups=4).offset_groups == 4


@pytest.mark.parametrize("cls", [DeformConv2dPack, ModulatedDeformConv2dPack])
def test_im2col_step_is_accepted(cls):
    a = cls(4, 6, 3, padding=1, im2col_step=64)
    b = cls(4, 6, 3, 1, 1, 1, 1, 1, True, 32)
    x = torch.randn(2, 4, 5, 5)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x))
    with pytest.raises(ValueError, match="im2col_step"):
        cls(4, 6, 3, im2col_step=0)


class _Bottleneck(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 1)
        self.conv2 = cls(4, 4, 3, padding=1, bias=False, deform_groups=2)


@pytest.mark.parametrize("cls", [DeformConv2dPack, ModulatedDeformConv2dPack])
def test_old_checkpoint_sibling_offset_keys_are_renamed(cls):
    torch.manual_seed(0)
    src = nn.Sequential(OrderedDict(block=_Bottleneck(cls)))
    with torch.no_grad():
        src.block.conv2.conv_offset.weight.normal_()
        src.block.conv2.conv_offset.bias.normal_()
    old = OrderedDict()  # the old mmdetection layout, no version metadata
    for k, v in src.state_dict().items():
        old[k.replace("conv2.conv_offset.", "conv2_offset.")] = v.clone()
    assert "block.conv2_offset.weight" in old
    dst = nn.Sequential(OrderedDict(block=_Bottleneck(cls)))
    dst.load_state_dict(old)  # strict
    torch.testing.assert_close(dst.block.conv2.conv_offset.weight,
                               src.block.conv2.conv_offset.weight)
    torch.testing.assert_close(dst.block.conv2.conv_offset.bias,
                               src.block.conv2.conv_offset.bias)
    # The caller's dict is left as it was.
    assert "block.conv2_offset.weight" in old


def test_new_checkpoints_are_not_renamed():
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(block=_Bottleneck(ModulatedDeformConv2dPack)))
    state = net.state_dict()
    assert "block.conv2.conv_offset.weight" in state
    net2 = nn.Sequential(OrderedDict(block=_Bottleneck(ModulatedDeformConv2dPack)))
    net2.load_state_dict(state)
    torch.testing.assert_close(net2.block.conv2.weight, net.block.conv2.weight)
