"""The float64 oracle against two independent formulations: the ``grid_sample`` formula that
mmcv, Deformable DETR and transformers use as their pure-PyTorch path, and transformers' own
module."""

from __future__ import annotations

import pytest
import torch

from deformconv.ops.ms_deform_attn.reference import (
    make_inputs,
    ms_deform_attn_grads_ref,
    ms_deform_attn_grid_sample,
    ms_deform_attn_ref,
)
from deformconv.testing import assert_close

SHAPES = [((5, 7), (3, 2), (1, 1)), ((4, 4),), ((2, 9), (6, 1))]


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_oracle_matches_grid_sample_formula(shapes, seed):
    t = make_inputs(shapes=shapes, seed=seed, requires_grad=True)
    args = (t["value"], t["spatial_shapes"], t["sampling_locations"], t["attention_weights"])
    expected = ms_deform_attn_grid_sample(*args)
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
