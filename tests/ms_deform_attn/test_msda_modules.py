"""The modules: mmcv's, Deformable DETR's and transformers' constructors, initialisation,
strict state dict loading and forward conventions, and a transformers Deformable DETR with its
attention swapped for ours (same outputs, one training step)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from deformconv import MultiScaleDeformableAttention
from deformconv.nn import DeformableDetrMultiscaleDeformableAttention, MSDeformAttn
from deformconv.ops.ms_deform_attn.reference import ms_deform_attn_grid_sample

SHAPES = torch.tensor([[6, 8], [3, 4], [1, 2]])
STARTS = torch.tensor([0, 48, 60])
S = 62


def _upstream_forward(mod, query, value, ref, drop):
    """The upstream modules' formula, batch first, with the grid_sample fallback."""
    N, Q, _ = query.shape
    M, L, P = mod.num_heads, mod.num_levels, mod.num_points
    v = mod.value_proj(value)
    if drop is not None:
        v = v.masked_fill(drop[..., None], 0.0)
    v = v.view(N, value.shape[1], M, -1)
    off = mod.sampling_offsets(query).view(N, Q, M, L, P, 2)
    w = mod.attention_weights(query).view(N, Q, M, L * P).softmax(-1).view(N, Q, M, L, P)
    if ref.shape[-1] == 2:
        norm = torch.stack([SHAPES[:, 1], SHAPES[:, 0]], -1)
        loc = ref[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
    else:
        loc = ref[:, :, None, :, None, :2] + off / P * ref[:, :, None, :, None, 2:] * 0.5
    return mod.output_proj(ms_deform_attn_grid_sample(v, SHAPES, loc, w))


def _randomise(mod, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return mod


def test_mmcv_state_dict_names_shapes_and_strict_load():
    mod = MultiScaleDeformableAttention(64, 4, 3, 2, value_proj_ratio=0.5)
    shapes = {k: tuple(v.shape) for k, v in mod.state_dict().items()}
    assert shapes == {
        "sampling_offsets.weight": (4 * 3 * 2 * 2, 64), "sampling_offsets.bias": (48,),
        "attention_weights.weight": (24, 64), "attention_weights.bias": (24,),
        "value_proj.weight": (32, 64), "value_proj.bias": (32,),
        "output_proj.weight": (64, 32), "output_proj.bias": (64,)}
    other = _randomise(MultiScaleDeformableAttention(64, 4, 3, 2, value_proj_ratio=0.5))
    mod.load_state_dict(other.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(mod.parameters(), other.parameters()))


def test_init_matches_upstream():
    mod = MultiScaleDeformableAttention(64, 8, 2, 3)
    bias = mod.sampling_offsets.bias.view(8, 2, 3, 2)
    for m in range(8):
        theta = m * 2 * math.pi / 8
        d = torch.tensor([math.cos(theta), math.sin(theta)])
        d = d / d.abs().max()
        for p in range(3):
            torch.testing.assert_close(bias[m, :, p], (d * (p + 1)).expand(2, 2))
    assert bias[2, 0, 0, 0].abs() < 1e-6 and bias[2, 0, 0, 1] == 1  # (≈0, 1), not exactly 0
    assert (mod.sampling_offsets.weight == 0).all()
    assert (mod.attention_weights.weight == 0).all() and (mod.attention_weights.bias == 0).all()
    assert (mod.value_proj.bias == 0).all() and (mod.output_proj.bias == 0).all()
    bound = math.sqrt(6 / (64 + 64))
    w = mod.value_proj.weight
    assert w.abs().max() <= bound and w.std() > bound / 3


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("coords", [2, 4])
def test_mmcv_forward_conventions(batch_first, coords):
    mod = _randomise(MultiScaleDeformableAttention(32, 4, 3, 2, batch_first=batch_first)).eval()
    g = torch.Generator().manual_seed(1)
    N, Q = 2, 5
    query, value = torch.randn(N, Q, 32, generator=g), torch.randn(N, S, 32, generator=g)
    pos, identity = torch.randn(N, Q, 32, generator=g), torch.randn(N, Q, 32, generator=g)
    ref = torch.rand(N, Q, 3, coords, generator=g)
    mask = torch.rand(N, S, generator=g) < 0.3
    expected = _upstream_forward(mod, query + pos, value, ref, mask) + identity

    def layout(t):
        return t if batch_first else t.transpose(0, 1)

    out = mod(layout(query), value=layout(value), identity=layout(identity),
              query_pos=layout(pos), key_padding_mask=mask, reference_points=ref,
              spatial_shapes=SHAPES, level_start_index=STARTS)
    torch.testing.assert_close(layout(out), expected, atol=2e-5, rtol=1e-5)
    # value and identity default to the query.
    out = mod(layout(value[:, :S]), reference_points=torch.rand(N, S, 3, 2, generator=g),
              spatial_shapes=SHAPES, level_start_index=STARTS)
    assert out.shape == layout(value).shape


def test_mmcv_dropout_before_residual():
    mod = MultiScaleDeformableAttention(32, 4, 3, 2, dropout=1.0, batch_first=True).train()
    q = torch.randn(2, 5, 32)
    out = mod(q, value=torch.randn(2, S, 32), reference_points=torch.rand(2, 5, 3, 2),
              spatial_shapes=SHAPES, level_start_index=STARTS)
    torch.testing.assert_close(out, q)


def test_deformable_detr_msdeformattn():
    mmcv = _randomise(MultiScaleDeformableAttention(32, 4, 3, 2, batch_first=True)).eval()
    detr = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2)
    detr.load_state_dict(mmcv.state_dict(), strict=True)
    g = torch.Generator().manual_seed(2)
    query, flat = torch.randn(2, 5, 32, generator=g), torch.randn(2, S, 32, generator=g)
    ref = torch.rand(2, 5, 3, 2, generator=g)
    pad = torch.rand(2, S, generator=g) < 0.2
    out = detr(query, ref, flat, SHAPES, STARTS, pad)
    torch.testing.assert_close(out, _upstream_forward(detr, query, flat, ref, pad), atol=2e-5,
                               rtol=1e-5)
    with_residual = mmcv(query, value=flat, identity=torch.zeros_like(query),
                         key_padding_mask=pad, reference_points=ref, spatial_shapes=SHAPES,
                         level_start_index=STARTS)
    torch.testing.assert_close(out, with_residual)


def _transformers():
    return pytest.importorskip("transformers.models.deformable_detr.modeling_deformable_detr")


def _config(**kw):
    from transformers import DeformableDetrConfig, ResNetConfig

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                            out_features=["stage2", "stage3", "stage4"])
    return DeformableDetrConfig(
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10,
        use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, **kw)


def test_transformers_module_strict_load_and_forward():
    hf = _transformers()
    cfg = _config(num_feature_levels=3)
    theirs = _randomise(hf.DeformableDetrMultiscaleDeformableAttention(cfg, 4, 2))
    ours = DeformableDetrMultiscaleDeformableAttention(cfg, 4, 2)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    g = torch.Generator().manual_seed(3)
    hidden, enc = torch.randn(2, 5, 32, generator=g), torch.randn(2, S, 32, generator=g)
    pos = torch.randn(2, 5, 32, generator=g)
    keep = torch.rand(2, S, generator=g) > 0.2
    kwargs = dict(attention_mask=keep, encoder_hidden_states=enc, position_embeddings=pos,
                  reference_points=torch.rand(2, 5, 3, 4, generator=g), spatial_shapes=SHAPES,
                  spatial_shapes_list=[tuple(s) for s in SHAPES.tolist()],
                  level_start_index=STARTS)
    (out, w), (ref_out, ref_w) = ours(hidden, **kwargs), theirs(hidden, **kwargs)
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(w, ref_w)


def test_transformers_deformable_detr_swap_and_train_step():
    hf = _transformers()
    from transformers import DeformableDetrModel

    torch.manual_seed(0)
    model = DeformableDetrModel(_config()).train()
    theirs = copy.deepcopy(model)
    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, hf.DeformableDetrMultiscaleDeformableAttention):
            ours = DeformableDetrMultiscaleDeformableAttention(model.config, module.n_heads,
                                                               module.n_points)
            ours.load_state_dict(module.state_dict(), strict=True)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, ours)
            swapped += 1
    assert swapped == 3  # encoder self-attention, two decoder cross-attentions
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(4))
    outs = []
    for m in (model, theirs):
        out = m(pixel_values=x)
        outs.append(out)
        loss = out.last_hidden_state.square().mean() + out.encoder_last_hidden_state.mean()
        loss.backward()
    for key in ("last_hidden_state", "encoder_last_hidden_state"):
        torch.testing.assert_close(outs[0][key], outs[1][key], atol=1e-5, rtol=1e-4)
    grads = dict(theirs.named_parameters())
    compared = 0
    for name, p in model.named_parameters():
        ref = grads[name].grad
        if ref is None:
            continue
        torch.testing.assert_close(p.grad, ref, atol=1e-5, rtol=1e-3, msg=name)
        compared += ref.abs().max() > 0
    assert compared > 20
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.encoder.layers[0].self_attn.sampling_offsets.weight.clone()
    opt.step()
    assert not torch.equal(before, model.encoder.layers[0].self_attn.sampling_offsets.weight)
    assert torch.isfinite(model(pixel_values=x).last_hidden_state).all()
