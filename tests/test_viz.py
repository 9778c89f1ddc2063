"""Sampling locations of 1-, 2- and 3-D layers: regular grid at zero offsets, agreement with the
op, layers, composition, plots."""

import doctest
import itertools
import math

import pytest
import torch
from torch import nn

import deformconv.viz.sampling
from deformconv import (
    DeformConv2dPack,
    DeformConv3dPack,
    ModulatedDeformConv2dPack,
    ModulatedDeformConv3dPack,
    deform_conv2d,
    deform_conv3d,
)
from deformconv.viz import (
    LayerSampling,
    effective_sampling,
    effective_sampling_batch,
    effective_sampling_points,
    layer_sampling,
    plot_sampling_points,
    sampling_locations,
)


@pytest.mark.parametrize("k,s,p,d", [((3, 3), (1, 1), (1, 1), (1, 1)),
                                     ((3, 2), (2, 1), (0, 2), (2, 3)),
                                     ((3,), (2,), (1,), (2,)),
                                     ((2, 3, 2), (1, 2, 1), (0, 1, 1), (2, 1, 3))])
def test_zero_offsets_give_the_regular_dilated_grid(k, s, p, d):
    R, G, out = len(k), 2, (4, 5, 3)[:len(k)]
    K = math.prod(k)
    loc = sampling_locations(torch.zeros(1, R * G * K, *out), kernel_size=k, stride=s,
                             padding=p, dilation=d)
    assert loc.shape == (1, G, K, *out, R)
    for g, o, (t, tap) in itertools.product(range(G), itertools.product(*map(range, out)),
                                            enumerate(itertools.product(*map(range, k)))):
        want = [o[r] * s[r] - p[r] + tap[r] * d[r] for r in range(R)]
        assert loc[(0, g, t, *o)].tolist() == want


def test_3d_locations_follow_the_depth_first_layout():
    off = torch.zeros(1, 3 * 2 * 8, 2, 3, 2)
    off[0, 3 * (8 + 5) + 0, 1, 2, 0] = 0.5  # group 1, tap 5 = (1, 0, 1): dz
    off[0, 3 * (8 + 5) + 2, 1, 2, 0] = -0.25  # its dx
    loc = sampling_locations(off, kernel_size=2, stride=(1, 2, 1), padding=(0, 1, 0),
                             dilation=2)
    assert loc.shape == (1, 2, 8, 2, 3, 2, 3)
    # output (1, 2, 0), tap (1, 0, 1): z = 1 + 2 + 0.5, y = 4 - 1 + 0, x = 0 + 2 - 0.25
    assert loc[0, 1, 5, 1, 2, 0].tolist() == [3.5, 3.0, 1.75]
    assert loc[0, 0, 5, 1, 2, 0].tolist() == [3.0, 3.0, 2.0]


def test_3d_locations_are_where_the_op_samples():
    # A one-hot input reveals the sampled position: kernel 1, one tap, integer offsets.
    x = torch.zeros(1, 1, 4, 4, 4)
    x[0, 0, 2, 1, 3] = 1
    off = torch.tensor([1.0, -1.0, 2.0]).view(1, 3, 1, 1, 1).expand(1, 3, 4, 4, 4)
    y = deform_conv3d(x, off, torch.ones(1, 1, 1, 1, 1))
    loc = sampling_locations(off, kernel_size=1)
    hit = (y[0, 0] == 1).nonzero().tolist()
    assert len(hit) == 1 and loc[0, 0, 0][tuple(hit[0])].tolist() == [2.0, 1.0, 3.0]


def test_1d_and_3d_layer_locations():
    layer = ModulatedDeformConv3dPack(2, 3, 3, padding=1)
    torch.nn.init.normal_(layer.conv_offset.weight, std=0.5)
    conv = nn.Conv3d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 3, 4, 5)
    s = layer_sampling(layer, x)
    assert s.offset.shape == (1, 81, 3, 4, 5) and s.mask.shape == (1, 27, 3, 4, 5)
    torch.testing.assert_close(sampling_locations(layer, x) - sampling_locations(conv, x),
                               s.offset.reshape(1, 1, 27, 3, 3, 4, 5).movedim(3, -1))
    assert torch.equal(sampling_locations(DeformConv3dPack(2, 3, 3, padding=1), x),
                       sampling_locations(conv, x))
    one = sampling_locations(nn.Conv1d(2, 3, 3, stride=2), torch.randn(1, 2, 9))
    assert one[0, 0, :, 1, 0].tolist() == [2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="2-D layers"):
        effective_sampling([s], (1, 1))


def test_offset_shape_errors():
    with pytest.raises(ValueError, match=r"offset must be \(N, 2\*G\*9"):
        sampling_locations(torch.zeros(1, 17, 4, 4), kernel_size=3)
    with pytest.raises(ValueError, match="R = 1, 2 or 3"):
        sampling_locations(torch.zeros(1, 2), kernel_size=1)
    with pytest.raises(TypeError, match=r"kernel_size must be an int or a tuple of 3 ints, got "
                                        r"\(1, 1\)"):
        sampling_locations(torch.zeros(1, 3, 2, 2, 2), kernel_size=(1, 1))
    with pytest.raises(ValueError, match="kernel_size is required"):
        sampling_locations(torch.zeros(1, 3, 2))


def test_docstring_examples():
    assert doctest.testmod(deformconv.viz.sampling).failed == 0


def test_locations_are_where_the_op_reads():
    """A weight that picks one tap and one channel turns the op into a pure sampler."""
    torch.manual_seed(0)
    G, C, H, W = 2, 4, 6, 7
    off = torch.randn(1, 2 * G * 9, 6, 7, dtype=torch.float64) * 1.5
    x = torch.randn(1, C, H, W, dtype=torch.float64)
    loc = sampling_locations(off, kernel_size=3, padding=1)
    for c, k in [(0, 0), (1, 4), (3, 8), (2, 5)]:
        w = torch.zeros(1, C, 3, 3, dtype=torch.float64)
        w[0, c, k // 3, k % 3] = 1
        got = deform_conv2d(x, off, w, padding=1)[0, 0]
        y, xx = loc[0, c // (C // G), k, ..., 0], loc[0, c // (C // G), k, ..., 1]
        # grid_sample with align_corners=True maps -1..1 onto pixel centres 0..W-1.
        grid = torch.stack((2 * xx / (W - 1) - 1, 2 * y / (H - 1) - 1), -1)[None]
        want = torch.nn.functional.grid_sample(x[:, c:c + 1], grid, align_corners=True)[0, 0]
        torch.testing.assert_close(got, want)
        assert want.abs().max() > 0


def test_from_layers():
    layer = ModulatedDeformConv2dPack(3, 4, 3, stride=2, padding=1)
    torch.nn.init.normal_(layer.conv_offset.weight, std=0.5)
    x = torch.randn(2, 3, 9, 9)
    s = layer_sampling(layer, x)
    assert s.offset.shape == (2, 18, 5, 5) and s.mask.shape == (2, 9, 5, 5)
    assert s.offset.abs().max() > 0
    loc = sampling_locations(layer, x)
    torch.testing.assert_close(loc, sampling_locations(s))
    plain = sampling_locations(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), x)
    torch.testing.assert_close(loc - plain, s.offset.reshape(2, 1, 9, 2, 5, 5)
                               .permute(0, 1, 2, 4, 5, 3))
    with pytest.raises(ValueError, match="input is required"):
        sampling_locations(layer)
    with pytest.raises(TypeError, match="layer must be"):
        layer_sampling(torch.nn.Linear(2, 2), x)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_composition_counts_and_regular_values(depth):
    d = [1, 2, 1][:depth]
    stack = [LayerSampling(torch.zeros(1, 18, 8, 8), (3, 3), (1, 1), (di, di), (di, di))
             for di in d]
    pts = effective_sampling_points(stack, (4, 3))
    assert pts.shape == (9 ** depth, 2)
    # Zero offsets: every path adds one dilated tap per layer.
    taps = [[(i * di - di, j * di - di) for i in range(3) for j in range(3)] for di in d]
    want = [[4 + sum(t[0] for t in path), 3 + sum(t[1] for t in path)]
            for path in itertools.product(*reversed(taps))]
    assert pts.tolist() == want


def test_composition_follows_offsets():
    """Two layers with constant offsets: the shifts add; a layer's own offsets move its taps."""
    off1 = torch.zeros(1, 18, 6, 6)
    off1[:, 0::2] = 0.5    # first layer moves every tap down by 0.5
    off2 = torch.zeros(1, 18, 6, 6)
    off2[:, 1::2] = -1.25  # second layer moves every tap left by 1.25
    stack = [LayerSampling(off1, (3, 3), padding=(1, 1)), LayerSampling(off2, (3, 3),
                                                                        padding=(1, 1))]
    zero = [LayerSampling(torch.zeros(1, 18, 6, 6), (3, 3), padding=(1, 1))] * 2
    got = effective_sampling_points(stack, (2, 3))
    base = effective_sampling_points(zero, (2, 3))
    torch.testing.assert_close(got - base, torch.tensor([0.5, -1.25]).expand(81, 2))
    # A varying field is interpolated between pixels: a ramp in x of the first layer's dy.
    ramp = torch.arange(6.0).expand(1, 18, 6, 6).clone()
    ramp[:, 1::2] = 0
    one = effective_sampling_points([LayerSampling(ramp, (3, 3), padding=(1, 1)), stack[1]],
                                    (2, 3))
    # The second layer reads layer-1 outputs at x = 3 - 1.25 + (j - 1), j its tap column
    # (taps of the last layer vary slowest), where the first layer's dy equals that x.
    mid_x = 3 - 1.25 + (torch.arange(81) // 9 % 3) - 1
    torch.testing.assert_close(one[:, 0] - base[:, 0], mid_x.float())
    torch.testing.assert_close(one[:, 1], base[:, 1] - 1.25)


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    layer = DeformConv2dPack(1, 2, 3, padding=1)
    img = torch.rand(1, 1, 10, 10)
    s = layer_sampling(layer, img)
    pts = effective_sampling_points([s], (5, 5))
    path = plot_sampling_points([img[0, 0]], [pts], [pts + 0.3], [(5, 5)], tmp_path / "p.png",
                                titles=["test"])
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with pytest.raises(ValueError, match="same non-zero length"):
        plot_sampling_points([img[0, 0]], [], [], [], tmp_path / "q.png")
    with pytest.raises(ValueError, match=r"images\[0\] must be a 2-D.*got shape \(1, 1,"):
        plot_sampling_points([img], [pts], [pts], [(5, 5)], tmp_path / "r.png")


def test_batched_composition_equals_one_pixel_at_a_time():
    torch.manual_seed(1)
    stack = [LayerSampling(torch.randn(3, 18, 6, 7) * 0.8, (3, 3), padding=(1, 1),
                           mask=torch.rand(3, 9, 6, 7)) for _ in range(3)]
    pixels = torch.tensor([[2.0, 3.0], [0.0, 6.0], [5.0, 1.0], [2.0, 3.0]])
    batch = torch.tensor([0, 2, 1, 1])
    pts, w = effective_sampling_batch(stack, pixels, batch)
    assert pts.shape == (4, 729, 2) and w.shape == (4, 729)
    for i in range(4):
        p1, w1 = effective_sampling(stack, tuple(pixels[i].tolist()), batch=int(batch[i]))
        torch.testing.assert_close(pts[i], p1)
        torch.testing.assert_close(w[i], w1)
    assert (pts[0] - pts[3]).abs().max() > 0.1  # a different image gives different points
    assert (w < 1).all() and (w > 0).all()
