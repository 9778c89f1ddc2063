"""Deformable RoI pooling layers: mmcv's constructor arguments, attribute and parameter names,
initialisation, strict state-dict loading, and outputs composed from the float64 oracle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deformconv import DeformRoIPool, DeformRoIPoolPack, ModulatedDeformRoIPoolPack, deform_roi_pool
from deformconv.ops.roi_pool.reference import deform_roi_pool_ref
from deformconv.testing import RoIProblem, assert_close

F64 = torch.float64


def _mmcv_state_dict(K: int, C: int, D: int, modulated: bool, seed: int = 0):
    """A state dict with mmcv's keys and shapes (as a checkpoint would hold), random values."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"offset_fc.0.weight": (D, K * C), "offset_fc.0.bias": (D,),
              "offset_fc.2.weight": (D, D), "offset_fc.2.bias": (D,),
              "offset_fc.4.weight": (2 * K, D), "offset_fc.4.bias": (2 * K,)}
    if modulated:
        shapes.update({"mask_fc.0.weight": (D, K * C), "mask_fc.0.bias": (D,),
                       "mask_fc.2.weight": (K, D), "mask_fc.2.bias": (K,)})
    return {k: 0.3 * torch.randn(s, generator=g, dtype=F64) for k, s in shapes.items()}


def _expected(sd, t, p: RoIProblem, modulated: bool):
    """The Pack's output written out: plain pool, MLPs, pool with offsets (times the mask)."""
    ph, pw = p.output_size
    kw = (p.output_size, p.spatial_scale, p.sampling_ratio, p.gamma)
    x, rois = t["input"], t["rois"]
    R = rois.shape[0]
    plain = deform_roi_pool_ref(x, rois, None, *kw).view(R, -1)

    def lin(h, k):
        return h @ sd[f"{k}.weight"].T + sd[f"{k}.bias"]

    h = torch.relu(lin(torch.relu(lin(plain, "offset_fc.0")), "offset_fc.2"))
    offset = lin(h, "offset_fc.4").view(R, 2, ph, pw)
    out = deform_roi_pool_ref(x, rois, offset, *kw)
    if modulated:
        mask = torch.sigmoid(lin(torch.relu(lin(plain, "mask_fc.0")), "mask_fc.2"))
        out = out * mask.view(R, 1, ph, pw)
    return out


@pytest.mark.parametrize("cls", [DeformRoIPoolPack, ModulatedDeformRoIPoolPack])
def test_mmcv_state_dict_loads_strict_and_gives_the_same_outputs(cls):
    p = RoIProblem(C=3, R=7, output_size=(3, 2), spatial_scale=0.5, sampling_ratio=2)
    modulated = cls is ModulatedDeformRoIPoolPack
    layer = cls(p.output_size, 3, deform_fc_channels=8, spatial_scale=0.5, sampling_ratio=2,
                gamma=0.1).double()
    sd = _mmcv_state_dict(6, 3, 8, modulated)
    assert sorted(layer.state_dict()) == sorted(sd)
    layer.load_state_dict(sd, strict=True)
    t = p.tensors(F64)
    assert_close(layer(t["input"], t["rois"]), _expected(sd, t, p, modulated))


def test_mmdetection_roi_layers_keys():
    # mmdetection builds one Pack per FPN level by keywords under roi_layers.{k}
    class Extractor(nn.Module):
        def __init__(self):
            super().__init__()
            self.roi_layers = nn.ModuleList(
                DeformRoIPoolPack(spatial_scale=1 / s, output_size=7, output_channels=16,
                                  deform_fc_channels=32) for s in (4, 8, 16, 32))

    e = Extractor()
    keys = set(e.state_dict())
    for k in range(4):
        for n in (0, 2, 4):
            assert {f"roi_layers.{k}.offset_fc.{n}.weight",
                    f"roi_layers.{k}.offset_fc.{n}.bias"} <= keys
    assert len(keys) == 24
    assert e.roi_layers[0].output_size == (7, 7)
    out_h, out_w = e.roi_layers[0].output_size  # mmdetection unpacks it
    e.load_state_dict({k: torch.randn_like(v) for k, v in e.state_dict().items()}, strict=True)


def test_attributes_and_initialisation():
    layer = DeformRoIPool(7, spatial_scale=0.25, sampling_ratio=2, gamma=0.2)
    assert layer.output_size == (7, 7) and isinstance(layer.output_size, tuple)
    assert (layer.spatial_scale, layer.sampling_ratio, layer.gamma) == (0.25, 2, 0.2)
    assert not list(layer.parameters()) and not list(layer.buffers())
    pack = ModulatedDeformRoIPoolPack((2, 3), 4, deform_fc_channels=5)
    assert pack.output_size == (2, 3) and pack.output_channels == 4
    assert pack.deform_fc_channels == 5
    assert [type(m) for m in pack.offset_fc] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU,
                                                 nn.Linear]
    assert [type(m) for m in pack.mask_fc] == [nn.Linear, nn.ReLU, nn.Linear, nn.Sigmoid]
    assert pack.offset_fc[0].weight.shape == (5, 24) and pack.offset_fc[4].weight.shape == (12, 5)
    assert pack.mask_fc[2].weight.shape == (6, 5)
    for m in (pack.offset_fc[4], pack.mask_fc[2]):
        assert not m.weight.any() and not m.bias.any()
    assert pack.offset_fc[0].weight.abs().sum() > 0 and pack.offset_fc[2].weight.any()


def test_new_packs_pool_like_the_plain_op():
    p = RoIProblem(C=3, R=7, output_size=(2, 2), offset=False)
    t = p.tensors(F64)
    plain = DeformRoIPool(p.output_size, p.spatial_scale)(t["input"], t["rois"])
    pack = DeformRoIPoolPack(p.output_size, 3, 8, p.spatial_scale).double()
    mpack = ModulatedDeformRoIPoolPack(p.output_size, 3, 8, p.spatial_scale).double()
    assert_close(pack(t["input"], t["rois"]), plain, tol=0)
    assert_close(mpack(t["input"], t["rois"]), 0.5 * plain, tol=0)


def test_gradients_reach_input_and_both_mlps():
    p = RoIProblem(C=3, R=7, output_size=(2, 2), spatial_scale=1.0)
    t = p.tensors(F64)
    x = t["input"].requires_grad_()
    layer = ModulatedDeformRoIPoolPack(p.output_size, 3, 8, 1.0).double()
    with torch.no_grad():
        layer.offset_fc[4].weight.normal_(0, 0.1)   # zero-initialised layers pass no
        layer.mask_fc[2].weight.normal_(0, 0.1)     # gradient to the layers before them
    layer(x, t["rois"]).square().sum().backward()
    assert x.grad.abs().sum() > 0
    for name, prm in layer.named_parameters():
        assert prm.grad is not None and prm.grad.abs().sum() > 0, name


def test_channel_mismatch_and_bad_output_size():
    pack = DeformRoIPoolPack(2, 4, 8)
    with pytest.raises(ValueError, match=r"input channels must equal output_channels \(4\), got 3"):
        pack(torch.randn(1, 3, 5, 5), torch.tensor([[0., 0, 0, 3, 3]]))
    with pytest.raises(TypeError, match="output_size must be an int or a pair of ints"):
        DeformRoIPool((2, 2, 2))
    with pytest.raises(ValueError, match="output_size must be >= 1"):
        DeformRoIPoolPack(0, 4)


def test_zero_regions_through_the_packs():
    mpack = ModulatedDeformRoIPoolPack(2, 3, 8)
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    y = mpack(x, torch.zeros(0, 5))
    assert y.shape == (0, 3, 2, 2)
    y.sum().backward()
    assert x.grad.shape == x.shape and not x.grad.any()


_POOL_ARGS = [
    (dict(spatial_scale="0.25"), TypeError, "spatial_scale must be a real number, got '0.25'"),
    (dict(spatial_scale=0), ValueError, "spatial_scale must be > 0, got 0"),
    (dict(spatial_scale=-1.0), ValueError, "spatial_scale must be > 0, got -1.0"),
    (dict(spatial_scale=float("inf")), ValueError, "spatial_scale must be finite"),
    (dict(sampling_ratio=1.5), TypeError, "sampling_ratio must be an int, got 1.5"),
    (dict(sampling_ratio=True), TypeError, "sampling_ratio must be an int, got True"),
    (dict(gamma=None), TypeError, "gamma must be a real number, got None"),
    (dict(gamma=float("nan")), ValueError, "gamma must be finite"),
    (dict(output_size=(2, 0)), ValueError, "output_size must be >= 1"),
]
_PACK_ARGS = [
    (dict(output_channels=0), ValueError, "output_channels must be >= 1, got 0"),
    (dict(output_channels=2.0), TypeError, "output_channels must be an int, got 2.0"),
    (dict(output_channels=None), TypeError, "output_channels must be an int, got None"),
    (dict(deform_fc_channels=-5), ValueError, "deform_fc_channels must be >= 1, got -5"),
    (dict(deform_fc_channels="8"), TypeError, "deform_fc_channels must be an int, got '8'"),
]


@pytest.mark.parametrize("cls, kw, err, msg", [
    (cls, *case) for cls in (DeformRoIPool, DeformRoIPoolPack, ModulatedDeformRoIPoolPack)
    for case in _POOL_ARGS + (_PACK_ARGS if cls is not DeformRoIPool else [])])
def test_every_constructor_argument_is_validated_by_name(cls, kw, err, msg):
    """The layers check each argument as the function does (the same messages), at
    construction, not at the first forward."""
    args = dict(output_size=2) if cls is DeformRoIPool else dict(
        output_size=2, output_channels=3, deform_fc_channels=8)
    args.update(kw)
    with pytest.raises(err, match=msg.replace("(", r"\(").replace(")", r"\)")):
        cls(**args)
    if set(kw) <= {"output_channels", "deform_fc_channels", "output_size"}:
        return
    # The function says the same about the same value.
    x, rois = torch.randn(1, 3, 5, 5), torch.tensor([[0., 0, 0, 3, 3]])
    fkw = {k: v for k, v in args.items() if k not in ("output_channels",
                                                        "deform_fc_channels")}
    with pytest.raises(err, match=msg.replace("(", r"\(").replace(")", r"\)")):
        deform_roi_pool(x, rois, None, **fkw)


def test_layer_stores_checked_python_values():
    np = pytest.importorskip("numpy")
    layer = DeformRoIPoolPack(np.int64(2), np.int32(3), np.int64(8), spatial_scale=np.float32(
        0.25), sampling_ratio=np.int64(2), gamma=1)
    assert (layer.output_size, layer.output_channels, layer.deform_fc_channels) == ((2, 2), 3, 8)
    assert type(layer.output_channels) is int and type(layer.sampling_ratio) is int
    assert type(layer.spatial_scale) is float and layer.spatial_scale == 0.25
    assert type(layer.gamma) is float and layer.gamma == 1.0
