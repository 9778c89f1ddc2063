"""Each convention of ``docs/ms_deform_attn.md``, pinned on the op with hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deformconv import ms_deform_attn

W = 5


def _row(values, x, y=0.5, weight=1.0, grad=False):
    """A single 1 x W level with one head, one query, one point at normalised (x, y)."""
    v = torch.tensor(values, dtype=torch.float64).view(1, W, 1, 1).requires_grad_(grad)
    loc = torch.tensor([x, y], dtype=torch.float64).view(1, 1, 1, 1, 1, 2).requires_grad_(grad)
    att = torch.full((1, 1, 1, 1, 1), weight, dtype=torch.float64, requires_grad=grad)
    out = ms_deform_attn(v, torch.tensor([[1, W]]), torch.tensor([0]), loc, att)
    return out, v, loc, att


VALUES = [2.0, 3.0, 5.0, 7.0, 11.0]


@pytest.mark.parametrize("k", range(W))
def test_pixel_centres_sit_at_half_integers(k):
    assert _row(VALUES, (k + 0.5) / W)[0].item() == VALUES[k]


def test_edges_give_half_the_border_pixel():
    assert _row(VALUES, 0.0)[0].item() == pytest.approx(VALUES[0] / 2)
    assert _row(VALUES, 1.0)[0].item() == pytest.approx(VALUES[-1] / 2)


def test_height_one_axis_maps_into_half_pixel():
    # H = 1: y in [0, 1] maps to h in [-0.5, 0.5]; y = 0.25 is h = -0.25, weight 0.75 on row 0.
    assert _row(VALUES, 0.5 / W, y=0.25)[0].item() == pytest.approx(0.75 * VALUES[0])


@pytest.mark.parametrize("x", [-0.5 / W, -1.0, (W + 0.5) / W, 2.0])
def test_at_or_beyond_pixel_minus_one_or_w_contributes_zero(x):
    out, v, loc, att = _row(VALUES, x, grad=True)
    assert out.item() == 0.0
    grads = torch.autograd.grad(out.sum(), [v, loc, att])
    assert all((g == 0).all() for g in grads)


def test_strict_cut_off_differs_from_grid_sample_at_minus_one():
    # Pixel -1 exactly: the kernel skips the sample (zero gradient), grid_sample does not.
    out, v, loc, att = _row(VALUES, -0.5 / W, grad=True)
    assert torch.autograd.grad(out.sum(), loc)[0].abs().sum() == 0
    img = torch.tensor(VALUES, dtype=torch.float64).view(1, 1, 1, W)
    grid = torch.tensor([2 * (-0.5 / W) - 1, 0.0], dtype=torch.float64,
                        requires_grad=True).view(1, 1, 1, 2)
    gs = F.grid_sample(img, grid, align_corners=False, padding_mode="zeros")
    assert torch.autograd.grad(gs.sum(), grid)[0][..., 0].item() == pytest.approx(
        VALUES[0] * W / 2)  # d/dx of the grid in [-1, 1]: v[0] * W / 2


def test_just_inside_minus_one_counts():
    out = _row(VALUES, (-0.5 + 1e-3) / W)[0].item()
    assert out == pytest.approx(1e-3 * VALUES[0])


@pytest.mark.parametrize("k", [0, 1, 3])
def test_floor_based_one_sided_derivative_at_integer_coordinates(k):
    out, v, loc, att = _row(VALUES, (k + 0.5) / W, grad=True)
    gx = torch.autograd.grad(out.sum(), loc)[0][..., 0].item()
    right = VALUES[k + 1] if k + 1 < W else 0.0
    assert gx == pytest.approx((right - VALUES[k]) * W)


def test_x_runs_along_width_and_levels_are_row_major():
    # Level 1 is 2 x 3 (rows y*3 + x after level 0's 4 rows): (x, y) = pixel (2, 1) is row 9.
    v = torch.arange(10, dtype=torch.float64).view(1, 10, 1, 1)
    shapes = torch.tensor([[2, 2], [2, 3]])
    loc = torch.tensor([[0.5, 0.5], [(2 + 0.5) / 3, (1 + 0.5) / 2]],
                       dtype=torch.float64).view(1, 1, 1, 2, 1, 2)
    att = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2, 1)
    assert ms_deform_attn(v, shapes, torch.tensor([0, 4]), loc, att).item() == 9.0


def test_output_channels_are_head_major_and_weights_used_as_given():
    v = torch.tensor([[1.0, 2.0], [10.0, 20.0]], dtype=torch.float64).view(1, 1, 2, 2)
    loc = torch.full((1, 1, 2, 1, 1, 2), 0.5, dtype=torch.float64)
    att = torch.tensor([3.0, -2.0], dtype=torch.float64).view(1, 1, 2, 1, 1)
    out = ms_deform_attn(v, torch.tensor([[1, 1]]), torch.tensor([0]), loc, att)
    assert out.view(-1).tolist() == [3.0, 6.0, -20.0, -40.0]
