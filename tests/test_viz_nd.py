"""Sampling-location helpers of the 1-D and 3-D layers."""

import doctest

import torch
from torch import nn

import deformconv.viz_nd
from deformconv import DeformConv3dPack, deform_conv3d
from deformconv.viz_nd import layer_sampling_locations, sampling_locations_nd


def test_3d_locations_follow_the_depth_first_layout():
    off = torch.zeros(1, 3 * 2 * 8, 2, 3, 2)
    off[0, 3 * (8 + 5) + 0, 1, 2, 0] = 0.5  # group 1, tap 5 = (1, 0, 1): dz
    off[0, 3 * (8 + 5) + 2, 1, 2, 0] = -0.25  # its dx
    loc = sampling_locations_nd(off, 2, stride=(1, 2, 1), padding=(0, 1, 0), dilation=2)
    assert loc.shape == (1, 2, 8, 2, 3, 2, 3)
    # output (1, 2, 0), tap (1, 0, 1): z = 1 + 2 + 0.5, y = 4 - 1 + 0, x = 0 + 2 - 0.25
    assert loc[0, 1, 5, 1, 2, 0].tolist() == [3.5, 3.0, 1.75]
    assert loc[0, 0, 5, 1, 2, 0].tolist() == [3.0, 3.0, 2.0]


def test_locations_are_where_the_op_samples():
    # A one-hot input reveals the sampled position: kernel 1, one tap, integer offsets.
    x = torch.zeros(1, 1, 4, 4, 4)
    x[0, 0, 2, 1, 3] = 1
    off = torch.tensor([1.0, -1.0, 2.0]).view(1, 3, 1, 1, 1).expand(1, 3, 4, 4, 4)
    y = deform_conv3d(x, off, torch.ones(1, 1, 1, 1, 1))
    loc = sampling_locations_nd(off, 1)
    hit = (y[0, 0] == 1).nonzero().tolist()
    assert len(hit) == 1 and loc[0, 0, 0][tuple(hit[0])].tolist() == [2.0, 1.0, 3.0]


def test_layer_locations():
    layer = DeformConv3dPack(2, 3, 3, padding=1)
    conv = nn.Conv3d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 3, 4, 5)
    assert torch.equal(layer_sampling_locations(layer, x), layer_sampling_locations(conv, x))
    one = layer_sampling_locations(nn.Conv1d(2, 3, 3, stride=2), torch.randn(1, 2, 9))
    assert one[0, 0, :, 1, 0].tolist() == [2.0, 3.0, 4.0]


def test_docstring_examples():
    assert doctest.testmod(deformconv.viz_nd).failed == 0
