"""The three attention modules reject bad inputs with a ValueError/TypeError naming the
caller's argument, the expected and the actual shape, before any projection or the op fails;
valid inputs (including the broadcasting upstream allows) keep working."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from deformconv import MultiScaleDeformableAttention
from deformconv.nn import DeformableDetrMultiscaleDeformableAttention, MSDeformAttn

SHAPES = torch.tensor([[8, 8], [4, 4], [2, 2], [1, 1]])
STARTS = torch.tensor([0, 64, 80, 84])
N, Q, S, E = 2, 7, 85, 256


def _mmcv():
    return MultiScaleDeformableAttention(E, 8, 4, 4, batch_first=True, dropout=0.0)


def _inputs():
    g = torch.Generator().manual_seed(0)
    return dict(query=torch.randn(N, Q, E, generator=g),
                value=torch.randn(N, S, E, generator=g),
                reference_points=torch.rand(N, Q, 4, 2, generator=g), spatial_shapes=SHAPES,
                level_start_index=STARTS)


@pytest.mark.parametrize("change, error, pattern", [
    (dict(reference_points=torch.rand(N, Q, 3, 2)), ValueError,
     r"reference_points must be \(N, Q, num_levels, 2\) points .*= \(2, 7, 4, 2 or 4\).*"
     r"got shape \(2, 7, 3, 2\)"),
    (dict(reference_points=torch.rand(N, Q, 4, 3)), ValueError,
     r"reference_points must be .*got shape \(2, 7, 4, 3\)"),
    (dict(reference_points=torch.rand(N, Q + 1, 4, 2)), ValueError,
     r"reference_points must be .*got shape \(2, 8, 4, 2\)"),
    (dict(reference_points=None), TypeError, r"reference_points is required: .*got None"),
    (dict(query=torch.randn(N, Q, 128)), ValueError,
     r"query must be \(N, Q, E\) with E = embed_dims = 256, got shape \(2, 7, 128\)"),
    (dict(query=torch.randn(N, Q, 4, E)), ValueError, r"query must be .*got shape"),
    (dict(value=torch.randn(N, S, 128)), ValueError,
     r"value must be \(N, S, E\) with E = embed_dims = 256, got shape \(2, 85, 128\)"),
    (dict(value=torch.randn(N + 1, S, E)), ValueError,
     r"value's batch size must be query's, 2, got 3"),
    (dict(spatial_shapes=None), TypeError,
     r"spatial_shapes is required: \(num_levels, 2\) = \(4, 2\) .*got None"),
    (dict(spatial_shapes=SHAPES[:3]), ValueError,
     r"spatial_shapes must be \(num_levels, 2\) = \(4, 2\) .*got shape \(3, 2\)"),
    (dict(spatial_shapes=[[8, 8]] * 4), TypeError, r"spatial_shapes must be a Tensor .*got list"),
    (dict(level_start_index=STARTS[:2]), ValueError,
     r"level_start_index must be \(num_levels,\) = \(4,\) .*got shape \(2,\)"),
    (dict(key_padding_mask=torch.zeros(N, S - 1, dtype=torch.bool)), ValueError,
     r"key_padding_mask must be \(N, S\) = \(2, 85\) .*got shape \(2, 84\)"),
    (dict(key_padding_mask=torch.zeros(N, S)), TypeError,
     r"key_padding_mask must be a torch.bool Tensor, got torch.float32"),
    (dict(identity=torch.randn(N, Q + 1, E)), ValueError,
     r"identity must be a Tensor of query's shape \(2, 7, 256\) .*got shape \(2, 8, 256\)"),
    (dict(query_pos=torch.randn(N, Q, 128)), ValueError,
     r"query_pos must be a Tensor of query's shape \(2, 7, 256\) .*got shape \(2, 7, 128\)"),
])
def test_mmcv_module_bad_inputs(change, error, pattern):
    kw = {**_inputs(), **change}
    with pytest.raises(error, match=pattern):
        _mmcv()(**kw)


def test_mmcv_module_sequence_first_names_its_layout():
    m = MultiScaleDeformableAttention(E, 8, 4, 4, batch_first=False)
    kw = _inputs()
    kw["query"] = torch.randn(Q, N, 128)
    with pytest.raises(ValueError, match=r"query must be \(Q, N, E\) with E = embed_dims = 256"):
        m(**kw)


def test_mmcv_module_valid_inputs_unchanged():
    m = _mmcv().eval()
    kw = _inputs()
    want = m(**kw)
    # level_start_index may be left out: it is the running sum of H*W.
    torch.testing.assert_close(m(**{**kw, "level_start_index": None}), want, rtol=0, atol=0)
    # A reference point shared by every level broadcasts, as upstream's addition does.
    ref = torch.rand(N, Q, 1, 2)
    got = m(**{**kw, "reference_points": ref})
    torch.testing.assert_close(got, m(**{**kw, "reference_points": ref.expand(N, Q, 4, 2)}))
    boxes = torch.rand(N, Q, 4, 4)
    assert m(**{**kw, "reference_points": boxes}).shape == (N, Q, E)
    kw["key_padding_mask"] = torch.zeros(N, S, dtype=torch.bool)
    torch.testing.assert_close(m(**kw), want)


@pytest.mark.parametrize("change, error, pattern", [
    (dict(reference_points=torch.rand(N, Q, 3, 2)), ValueError,
     r"reference_points must be .*got shape \(2, 7, 3, 2\)"),
    (dict(query=torch.randn(N, Q, 128)), ValueError, r"query must be \(N, Q, E\) with E = "),
    (dict(input_flatten=torch.randn(N, S, 128)), ValueError,
     r"input_flatten must be \(N, S, E\) with E = embed_dims = 256"),
    (dict(input_spatial_shapes=torch.tensor([[8, 8]])), ValueError,
     r"input_spatial_shapes must be \(num_levels, 2\) = \(4, 2\).*got shape \(1, 2\)"),
    (dict(input_level_start_index=None), TypeError, r"input_level_start_index is required"),
    (dict(input_level_start_index=STARTS[1:]), ValueError,
     r"input_level_start_index must be \(num_levels,\) = \(4,\)"),
    (dict(input_padding_mask=torch.zeros(N, S + 1, dtype=torch.bool)), ValueError,
     r"input_padding_mask must be \(N, S\) = \(2, 85\)"),
])
def test_deformable_detr_module_bad_inputs(change, error, pattern):
    i = _inputs()
    kw = dict(query=i["query"], reference_points=i["reference_points"],
              input_flatten=i["value"], input_spatial_shapes=SHAPES,
              input_level_start_index=STARTS)
    kw.update(change)
    with pytest.raises(error, match=pattern):
        MSDeformAttn(E, 4, 8, 4)(**kw)


@pytest.mark.parametrize("change, error, pattern", [
    (dict(reference_points=torch.rand(N, Q, 3, 2)), ValueError,
     r"reference_points must be .*got shape \(2, 7, 3, 2\)"),
    (dict(reference_points=None), TypeError, r"reference_points is required"),
    (dict(spatial_shapes=None), TypeError, r"spatial_shapes is required"),
    (dict(hidden_states=torch.randn(N, Q, 128)), ValueError,
     r"hidden_states must be \(N, Q, E\) with E = embed_dims = 256"),
    (dict(encoder_hidden_states=torch.randn(N + 1, S, E)), ValueError,
     r"encoder_hidden_states' batch size must be hidden_states', 2, got 3"),
    (dict(attention_mask=torch.ones(N, Q, dtype=torch.bool)), ValueError,
     r"attention_mask must be \(N, S\) = \(2, 85\) \(one flag per row of "
     r"encoder_hidden_states\), got shape \(2, 7\)"),
    (dict(position_embeddings=torch.randn(N, Q, 3)), ValueError,
     r"position_embeddings must be a Tensor of hidden_states' shape"),
])
def test_transformers_module_bad_inputs(change, error, pattern):
    i = _inputs()
    kw = dict(hidden_states=i["query"], encoder_hidden_states=i["value"],
              reference_points=i["reference_points"], spatial_shapes=SHAPES,
              level_start_index=STARTS, attention_mask=torch.ones(N, S, dtype=torch.bool))
    kw.update(change)
    cfg = SimpleNamespace(d_model=E, num_feature_levels=4)
    with pytest.raises(error, match=pattern):
        DeformableDetrMultiscaleDeformableAttention(cfg, 8, 4)(**kw)
