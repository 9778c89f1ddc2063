"""DCNv3 and DCNv4 layers: upstream state-dict layouts loaded strictly, initialisation,
forward against a composition written from upstream's description, and a small
InternImage-style model that trains on CPU and exports."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deformconv
from deformconv import DCNv3, DCNv4
from deformconv.testing import assert_close
from deformconv.testing_dcn import internimage_pytorch


def upstream_dcnv3_keys(C, G, k, dw_k, norm="LN", cfs=False, rc=False):
    """InternImage's DCNv3 state dict: key -> shape (written from its published layout)."""
    K = k * k - int(rc)
    keys = {"dw_conv.0.weight": (C, 1, dw_k, dw_k), "dw_conv.0.bias": (C,),
            "offset.weight": (G * K * 2, C), "offset.bias": (G * K * 2,),
            "mask.weight": (G * K, C), "mask.bias": (G * K,),
            "input_proj.weight": (C, C), "input_proj.bias": (C,),
            "output_proj.weight": (C, C), "output_proj.bias": (C,)}
    if norm == "LN":
        keys.update({"dw_conv.1.1.weight": (C,), "dw_conv.1.1.bias": (C,)})
    else:
        keys.update({"dw_conv.1.0.weight": (C,), "dw_conv.1.0.bias": (C,),
                     "dw_conv.1.0.running_mean": (C,), "dw_conv.1.0.running_var": (C,),
                     "dw_conv.1.0.num_batches_tracked": ()})
    if cfs:
        keys.update({"center_feature_scale_proj_weight": (G, C),
                     "center_feature_scale_proj_bias": (G,)})
    return keys


def upstream_dcnv4_keys(C, G, k, dw_k=None, cfs=False, rc=False, output_bias=True,
                        without_pointwise=False):
    K = G * (k * k - int(rc))
    rows = -(-3 * K // 8) * 8
    keys = {"offset_mask.weight": (rows, C), "offset_mask.bias": (rows,)}
    if dw_k is not None:
        keys.update({"offset_mask_dw.weight": (C, 1, dw_k, dw_k), "offset_mask_dw.bias": (C,)})
    if not without_pointwise:
        keys.update({"value_proj.weight": (C, C), "value_proj.bias": (C,),
                     "output_proj.weight": (C, C)})
        if output_bias:
            keys["output_proj.bias"] = (C,)
    if cfs:
        keys.update({"center_feature_scale_proj_weight": (G, C),
                     "center_feature_scale_proj_bias": (G,)})
    return keys


def random_state(keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.tensor(3) if k.endswith("num_batches_tracked") else
                torch.rand(s, generator=g) + 0.5 if k.endswith("running_var") else
                0.3 * torch.randn(s, generator=g)) for k, s in keys.items()}


@pytest.mark.parametrize("norm,cfs,rc,dw_k", [("LN", False, False, None), ("BN", True, False, 5),
                                              ("LN", True, True, None)])
def test_dcnv3_state_dict_is_internimages(norm, cfs, rc, dw_k):
    m = DCNv3(32, kernel_size=3, dw_kernel_size=dw_k, group=4, norm_layer=norm,
              center_feature_scale=cfs, remove_center=rc)
    keys = upstream_dcnv3_keys(32, 4, 3, dw_k or 3, norm, cfs, rc)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == keys
    state = random_state(keys)
    m.load_state_dict(state, strict=True)
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k])


@pytest.mark.parametrize("kw", [dict(), dict(dw_kernel_size=3, center_feature_scale=True),
                                dict(remove_center=True, output_bias=False),
                                dict(without_pointwise=True)])
def test_dcnv4_state_dict_is_flashinternimages(kw):
    m = DCNv4(64, kernel_size=3, group=4, **kw)
    keys = upstream_dcnv4_keys(64, 4, 3, kw.get("dw_kernel_size"),
                               kw.get("center_feature_scale", False),
                               kw.get("remove_center", False), kw.get("output_bias", True),
                               kw.get("without_pointwise", False))
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == keys
    if not kw:  # C=64, G=4, 3x3: 3*36 = 108 rows padded to 112
        assert keys["offset_mask.weight"] == (112, 64)
    m.load_state_dict(random_state(keys), strict=True)


def test_dcnv3_init_samples_the_plain_grid_with_weights_one_over_p():
    torch.manual_seed(0)
    m = DCNv3(8, group=2)
    x = torch.randn(2, 5, 6, 8)
    v = m.input_proj(x).permute(0, 3, 1, 2)
    box = F.conv2d(v, torch.full((8, 1, 3, 3), 1 / 9), padding=1, groups=8)
    assert_close(m(x), m.output_proj(box.permute(0, 2, 3, 1)), tol=1e-5)
    assert m.offset.weight.abs().max() == 0 and m.mask.bias.abs().max() == 0
    assert m.input_proj.bias.abs().max() == 0


def test_dcnv4_op_output_is_zero_at_init():
    torch.manual_seed(0)
    m = DCNv4(16, group=2)
    x = torch.randn(2, 30, 16)
    assert m(x, shape=(5, 6)).abs().max() == 0  # masks all 0, output_proj bias 0
    nn.init.normal_(m.offset_mask.bias)
    assert m(x, shape=(5, 6)).abs().max() > 0


def _dcnv3_upstream_forward(m: DCNv3, x):
    """DCNv3's forward as InternImage describes it, with its grid_sample formulation."""
    N, H, W, C = x.shape
    v = F.linear(x, m.input_proj.weight, m.input_proj.bias)
    x1 = m.dw_conv(x.permute(0, 3, 1, 2))
    off = F.linear(x1, m.offset.weight, m.offset.bias)
    msk = F.softmax(F.linear(x1, m.mask.weight, m.mask.bias).view(N, H, W, m.group, -1), -1)
    y = internimage_pytorch(v, off, msk.reshape(N, H, W, -1), 3, 3, 1, 1, 1, 1, 1, 1, m.group,
                            C // m.group, m.offset_scale, bool(m.remove_center))
    if m.center_feature_scale:
        s = torch.sigmoid(F.linear(x1, m.center_feature_scale_proj_weight,
                                   m.center_feature_scale_proj_bias))
        s = s[..., None].repeat(1, 1, 1, 1, C // m.group).flatten(-2)
        y = y * (1 - s) + v * s
    return F.linear(y, m.output_proj.weight, m.output_proj.bias)


@pytest.mark.parametrize("norm,cfs,rc", [("LN", False, False), ("BN", True, True)])
def test_dcnv3_forward_matches_upstream_composition(norm, cfs, rc):
    m = DCNv3(12, group=3, norm_layer=norm, center_feature_scale=cfs, remove_center=rc,
              offset_scale=0.7).double().eval()
    m.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in
                       random_state(upstream_dcnv3_keys(12, 3, 3, 3, norm, cfs, rc)).items()})
    x = torch.randn(2, 6, 5, 12, dtype=torch.float64)
    assert_close(m(x), _dcnv3_upstream_forward(m, x), tol=1e-12)


def test_dcnv4_forward_matches_composition():
    m = DCNv4(12, group=3, dw_kernel_size=3, center_feature_scale=True).double()
    keys = upstream_dcnv4_keys(12, 3, 3, 3, True)
    m.load_state_dict({k: v.double() for k, v in random_state(keys).items()})
    x = torch.randn(2, 30, 12, dtype=torch.float64)
    N, L, C = x.shape
    v = F.linear(x, m.value_proj.weight, m.value_proj.bias).view(N, 5, 6, C)
    om_in = F.conv2d(x.view(N, 5, 6, C).permute(0, 3, 1, 2), m.offset_mask_dw.weight,
                     m.offset_mask_dw.bias, padding=1, groups=C).permute(0, 2, 3, 1)
    om = F.linear(om_in, m.offset_mask.weight, m.offset_mask.bias)
    G, P = 3, 9
    per = om[..., :G * 3 * P].unflatten(-1, (G, 3 * P))
    y = internimage_pytorch(v, per[..., :2 * P].flatten(-2), per[..., 2 * P:].flatten(-2),
                            3, 3, 1, 1, 1, 1, 1, 1, G, C // G, 1.0)
    s = torch.sigmoid(F.linear(y, m.center_feature_scale_proj_weight,
                               m.center_feature_scale_proj_bias))
    s = s[..., None].repeat(1, 1, 1, 1, C // G).flatten(-2)
    y = (y * (1 - s) + v * s).reshape(N, L, C)
    want = F.linear(y, m.output_proj.weight, m.output_proj.bias)
    assert_close(m(x, shape=(5, 6)), want, tol=1e-12)


def test_bad_module_arguments():
    with pytest.raises(ValueError, match=r"channels \(10\) must be divisible by group \(4\)"):
        DCNv3(10, group=4)
    with pytest.raises(ValueError, match="norm_layer must be 'LN' or 'BN', got 'GN'"):
        DCNv3(8, group=2, norm_layer="GN")
    with pytest.raises(ValueError, match="remove_center needs an odd kernel_size, got 4"):
        DCNv4(8, kernel_size=4, group=2, remove_center=True)
    with pytest.raises(ValueError, match=r"shape \(H, W\) = \(4, 4\) must have H\*W = L = 30"):
        DCNv4(8, group=2)(torch.randn(1, 30, 8), shape=(4, 4))


class Block(nn.Module):
    """InternImage's basic layer: x + DCNv3(LN(x)), x + MLP(LN(x)), channels last."""

    def __init__(self, C, G):
        super().__init__()
        self.norm1, self.dcn = nn.LayerNorm(C), DCNv3(C, group=G)
        self.norm2 = nn.LayerNorm(C)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C))

    def forward(self, x):
        x = x + self.dcn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyInternImage(nn.Module):
    """Stem (two stride-2 convs, as InternImage's), three DCNv3 blocks, pooled classifier."""

    def __init__(self, C=16, G=2, classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, C // 2, 3, 2, 1), nn.BatchNorm2d(C // 2),
                                  nn.GELU(), nn.Conv2d(C // 2, C, 3, 2, 1))
        self.norm = nn.LayerNorm(C)
        self.blocks = nn.Sequential(*(Block(C, G) for _ in range(3)))
        self.head = nn.Linear(C, classes)

    def forward(self, img):
        x = self.norm(self.stem(img).permute(0, 2, 3, 1))
        return self.head(self.blocks(x).mean((1, 2)))


def test_internimage_style_model_trains_and_exports():
    torch.manual_seed(0)
    model = TinyInternImage()
    img = torch.randn(8, 3, 16, 16)
    label = torch.arange(8) % 3
    img = img + label.view(8, 1, 1, 1).float()  # a learnable signal
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(img), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    offset_grads = [b.dcn.offset.weight.grad for b in model.blocks]
    assert all(g is not None and g.abs().max() > 0 for g in offset_grads)
    model.eval()
    ep = torch.export.export(model, (img[:2],))
    assert "deformconv.dcnv3.default" in str(ep.graph)
    assert_close(ep.module()(img[:2]), model(img[:2]), tol=1e-6)


def test_modules_are_exported_at_top_level():
    assert deformconv.DCNv3 is DCNv3 and deformconv.DCNv4 is DCNv4
    assert {"dcnv3", "dcnv4", "DCNv3", "DCNv4"} <= set(deformconv.__all__)
