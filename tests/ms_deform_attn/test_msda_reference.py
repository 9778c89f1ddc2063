"""The float64 oracle against two independent formulations: the ``grid_sample`` formula that
mmcv, Deformable DETR and transformers use as their pure-PyTorch path (written here), and
transformers' own module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deformconv.ops.ms_deform_attn.reference import (
    make_inputs,
    ms_deform_attn_grads_ref,
    ms_deform_attn_ref,
)
from deformconv.testing import assert_close

SHAPES = [((5, 7), (3, 2), (1, 1)), ((4, 4),), ((2, 9), (6, 1))]


def grid_sample_formula(value, spatial_shapes, sampling_locations, attention_weights):
    """One ``grid_sample(align_corners=False, padding_mode="zeros")`` per level on ``2*loc-1``,
    weighted and summed: the fallback everyone copies."""
    N, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    levels = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1
    samples = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        v = levels[lvl].permute(0, 2, 3, 1).reshape(N * M, D, h, w)
        grid = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)          # (N*M, Q, P, 2)
        samples.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))               # (N*M, D, Q, P)
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Q, L * P)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(N, M * D, Q).transpose(1, 2)


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_oracle_matches_grid_sample_formula(shapes, seed):
    t = make_inputs(shapes=shapes, seed=seed, requires_grad=True)
    args = (t["value"], t["spatial_shapes"], t["sampling_locations"], t["attention_weights"])
    expected = grid_sample_formula(*args)
    assert_close(ms_deform_attn_ref(*args), expected, name="forward")
    g = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    autograd = torch.autograd.grad(expected, [args[0], args[2], args[3]], g)
    for name, got, want in zip(("value", "locations", "weights"),
                               ms_deform_attn_grads_ref(g, *args), autograd):
        assert_close(got, want, name=name, tol=1e-12)


def test_oracle_matches_transformers():
    mod = pytest.importorskip("transformers.models.deformable_detr.modeling_deformable_detr")
    t = make_inputs(N=2, Q=6, M=3, D=5, shapes=((6, 5), (3, 3), (2, 1)), P=2, seed=3)
    shapes = t["spatial_shapes"]
    expected = mod.MultiScaleDeformableAttention()(
        t["value"], shapes, [tuple(s) for s in shapes.tolist()], t["level_start_index"],
        t["sampling_locations"], t["attention_weights"], 64)
    got = ms_deform_attn_ref(t["value"], shapes, t["sampling_locations"],
                             t["attention_weights"])
    assert_close(got, expected, name="transformers")
