"""The layers of every dimensionality R: ``DeformConv{R}d`` (nn.Conv{R}d's interface plus
offsets, torchvision's for R = 2) and the self-offsetting v1/v2 ``(Modulated)DeformConv{R}dPack``
layers (mmcv's layout). What every layer accepts like nn.Conv{R}d is in
test_deform_conv_layers_like_conv.py; mmcv's 2-D specifics in test_mmcv_compat.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deformconv
from deformconv.nn.deform_conv import deformable_from_conv
from deformconv.ops.deform_conv.reference import deform_conv_ref
from deformconv.testing import Problem, assert_close

R_ALL = [1, 2, 3]
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
FCONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
SIZES = {1: (11,), 2: (9, 8), 3: (5, 6, 4)}
TUPLE = {1: "a tuple of 1 int", 2: "a pair of ints", 3: "a tuple of 3 ints"}
DIMS = {1: "W", 2: "H, W", 3: "D, H, W"}


def _layer(R):
    return getattr(deformconv, f"DeformConv{R}d")


def _v1(R):
    return getattr(deformconv, f"DeformConv{R}dPack")


def _v2(R):
    return getattr(deformconv, f"ModulatedDeformConv{R}dPack")


def _fn(R):
    return getattr(deformconv, f"deform_conv{R}d")


def _pick(R, values):
    """The first R entries of a per-dimension tuple."""
    return tuple(values[:R])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("R", R_ALL)
def test_external_offset_layer_matches_function_and_conv_init(R, bias):
    kernel, stride = _pick(R, (3, 2, 3)), _pick(R, (2, 1, 1))
    padding, dilation = _pick(R, (1, 0, 1)), _pick(R, (1, 2, 1))
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=2, bias=bias)
    torch.manual_seed(1)
    conv = CONV[R](4, 6, kernel, **kw)
    torch.manual_seed(1)
    layer = _layer(R)(4, 6, kernel, **kw)
    # Same shapes, names and initialisation: state dicts move both ways.
    assert layer.weight.shape == (6, 2, *kernel)
    assert torch.equal(layer.weight, conv.weight)
    assert (layer.bias is None) if not bias else torch.equal(layer.bias, conv.bias)
    layer.load_state_dict(conv.state_dict(), strict=True)
    assert "groups=2" in repr(layer) and ("bias=False" in repr(layer)) == (not bias)
    p = Problem(N=2, C=4, O=6, size=SIZES[R], kernel=kernel, stride=stride, padding=padding,
                dilation=dilation, groups=2, offset_scale=1.0)
    t = p.tensors(torch.float32)
    x, off, m = t["input"], t["offset"], t["mask"]
    y = layer(x, off, m)
    b = layer.bias
    assert torch.equal(y, _fn(R)(x, off, layer.weight, b, stride, padding, dilation, m))
    assert_close(y, deform_conv_ref(x.double(), off.double(), layer.weight.double(),
                                    b.double() if bias else None, stride, padding, dilation,
                                    m.double()), name="output")


@pytest.mark.parametrize("R", R_ALL)
def test_factory_keywords(R):
    layer = _v2(R)(4, 4, 3, padding=1, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    assert layer(torch.randn(1, 4, *SIZES[R], dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("groups,offset_groups", [(1, 1), (2, 1), (1, 3), (3, 2)])
@pytest.mark.parametrize("R", R_ALL)
def test_v1_new_layer_equals_conv(R, groups, offset_groups):
    stride, padding, dilation = _pick(R, (1, 2, 1)), _pick(R, (2, 1, 1)), _pick(R, (2, 1, 2))
    layer = _v1(R)(6, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups,
                   offset_groups=offset_groups)
    assert layer.conv_offset.out_channels == R * offset_groups * 3 ** R
    x = torch.randn(2, 6, *SIZES[R])
    want = FCONV[R](x, layer.weight, layer.bias, stride, padding, dilation, groups)
    assert_close(layer(x), want, name="output")


@pytest.mark.parametrize("R", R_ALL)
def test_v2_new_layer_is_half_conv_plus_bias(R):
    layer = _v2(R)(4, 5, 3, padding=1, deform_groups=2)  # mmcv's name of offset_groups
    assert layer.offset_groups == 2 and layer.conv_offset.out_channels == (R + 1) * 2 * 3 ** R
    assert set(layer.state_dict()) == {"weight", "bias", "conv_offset.weight",
                                       "conv_offset.bias"}
    x = torch.randn(2, 4, *SIZES[R])
    want = 0.5 * FCONV[R](x, layer.weight, None, padding=1) + layer.bias.view(-1, *[1] * R)
    assert_close(layer(x), want, name="output")


@pytest.mark.parametrize("R", R_ALL)
def test_v2_channel_routing_follows_mmcv(R):
    # mmcv (2-D): o1, o2, mask = chunk(conv_offset(x), 3); offset = cat(o1, o2);
    # mask = sigmoid(mask): the offsets first, then the mask logits, in every dimensionality.
    layer = _v2(R)(2, 3, 3, padding=1, offset_groups=2).double()
    torch.nn.init.normal_(layer.conv_offset.weight, std=0.5)
    torch.nn.init.normal_(layer.conv_offset.bias, std=0.5)
    x = torch.randn(1, 2, *SIZES[R], dtype=torch.float64)
    out = layer.conv_offset(x)
    n_off = R * 2 * 3 ** R
    want = deform_conv_ref(x, out[:, :n_off], layer.weight, layer.bias, 1, 1, 1,
                           torch.sigmoid(out[:, n_off:]))
    assert_close(layer(x), want, name="output")
    off, m = layer.offset_and_mask(x)
    assert torch.equal(off, out[:, :n_off]) and torch.equal(m, torch.sigmoid(out[:, n_off:]))


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("R", R_ALL)
def test_gradients_reach_offset_predictor(R, version):
    layer = (_v1 if version == 1 else _v2)(R)(4, 4, 3, padding=1, offset_groups=2)
    x = torch.randn(2, 4, *SIZES[R])
    layer(x).square().sum().backward()
    for p in (layer.weight, layer.bias, layer.conv_offset.weight, layer.conv_offset.bias):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("R", R_ALL)
def test_layer_rejects_bad_groups(R):
    with pytest.raises(ValueError, match=r"in_channels \(5\) must be divisible by groups \(2\)"):
        _layer(R)(5, 4, 3, groups=2)
    for cls in (_v1(R), _v2(R)):
        with pytest.raises(ValueError, match=r"offset_groups must be >= 1 and divide "
                                             r"in_channels \(4\), got 3"):
            cls(4, 4, 3, offset_groups=3)


BAD_ARGUMENTS = [  # keyword arguments, exception, message ({t}: the words of an R-tuple)
    (dict(padding="full"), ValueError, r"padding must be an int, {t}, 'valid' or 'same', "
                                       r"got 'full'"),
    (dict(padding=-1), ValueError, r"padding must be >= 0, got -1"),
    (dict(padding=(1, 2, 3, 4)), TypeError, r"padding must be an int or {t}"),
    (dict(stride=True), TypeError, r"stride must be an int or {t}, got True"),
    (dict(stride=1.5), TypeError, r"stride must be an int or {t}, got 1.5"),
    (dict(kernel_size=0), ValueError, r"kernel_size must be >= 1, got 0"),
    (dict(kernel_size=(3, 3, 3, 3)), TypeError, r"kernel_size must be an int or {t}"),
    (dict(in_channels=0), ValueError, r"in_channels must be >= 1, got 0"),
    (dict(out_channels=0), ValueError, r"out_channels must be >= 1, got 0"),
    (dict(groups=0), ValueError, r"groups must be >= 1, got 0"),
    (dict(padding="same", stride=2), ValueError, r"padding='same' needs stride 1"),
]


@pytest.mark.parametrize("kwargs,exc,pattern", BAD_ARGUMENTS,
                         ids=[",".join(f"{k}={v!r}" for k, v in c[0].items())
                              for c in BAD_ARGUMENTS])
@pytest.mark.parametrize("kind", ["DeformConv", "Pack", "ModulatedPack"])
@pytest.mark.parametrize("R", R_ALL)
def test_constructor_rejects_bad_arguments(R, kind, kwargs, exc, pattern):
    cls = {"DeformConv": _layer, "Pack": _v1, "ModulatedPack": _v2}[kind](R)
    args = dict(in_channels=4, out_channels=6, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(exc, match=pattern.format(t=TUPLE[R])):
        cls(**args)


@pytest.mark.parametrize("R", R_ALL)
def test_valid_and_same_padding_like_conv(R):
    for padding, dilation in (("same", 1), ("same", 2), ("valid", 1)):
        layer = _v1(R)(4, 6, 3, padding=padding, dilation=dilation)
        conv = CONV[R](4, 6, 3, padding=padding, dilation=dilation)
        x = torch.randn(1, 4, *SIZES[R])
        conv.load_state_dict({"weight": layer.weight, "bias": layer.bias})
        assert_close(layer(x), conv(x), name=f"{padding}, dilation {dilation}")
    assert _v1(R)(2, 4, 3, padding="same").padding == (1,) * R


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("R", R_ALL)
def test_every_reinitialisation_starts_on_the_regular_grid(R, version):
    cls = _v1(R) if version == 1 else _v2(R)
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
        x = torch.randn(1, 4, *SIZES[R])
        scale = 0.5 if version == 2 else 1.0
        want = (scale * FCONV[R](x, layer.weight, None, padding=1)
                + layer.bias.view(-1, *[1] * R))
        assert_close(layer(x), want, name="output")
    # A trained-looking predictor is zeroed again by reset_parameters.
    layer = cls(4, 4, 3, padding=1)
    torch.nn.init.ones_(layer.conv_offset.weight)
    torch.nn.init.ones_(layer.conv_offset.bias)
    layer.reset_parameters()
    assert layer.conv_offset.weight.abs().max() == 0 and not layer.conv_offset.bias.any()


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("R", R_ALL)
def test_pack_layers_check_their_input(R, version):
    layer = (_v1 if version == 1 else _v2)(R)(4, 6, 3, padding=1)
    bad = (1, 5, *SIZES[R])
    dims = DIMS[R]
    with pytest.raises(ValueError, match=rf"input must have shape \(N, 4, {dims}\) or "
                                         rf"\(4, {dims}\), got \({', '.join(map(str, bad))}\)"):
        layer(torch.randn(*bad))
    with pytest.raises(TypeError, match=r"input must be a Tensor, got list"):
        layer([1.0])


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("R", R_ALL)
def test_from_conv_preserves_the_function(R, version):
    conv = CONV[R](4, 6, 3, stride=(2,) * R, padding=1, groups=2).double()
    x = torch.randn(2, 4, *SIZES[R], dtype=torch.float64)
    new = deformable_from_conv(conv, version, offset_groups=2)
    assert type(new) is (_v1 if version == 1 else _v2)(R)
    y = new(x)
    assert_close(y, conv(x))
    y.sum().backward()
    assert new.conv_offset.weight.grad.abs().sum() > 0


def test_from_conv_refuses_other_modules():
    with pytest.raises(TypeError, match="conv must be an nn.Conv1d, nn.Conv2d or nn.Conv3d"):
        deformable_from_conv(nn.Linear(2, 2))
