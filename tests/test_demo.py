"""The demo's pieces: mask-weighted composed sampling, spreads, example choice, summaries."""

import math

import pytest
import torch

from deformconv.demo.report import paired, summarize
from deformconv.viz import LayerSampling, effective_sampling, off_image, weighted_spread


def test_path_weights_are_the_product_of_the_masks():
    """Two 3x3 layers, zero offsets: the weight of path (last tap k2, first tap k1) is
    mask2[k2] * mask1[k1], read at the positions the path passes through."""
    m2 = torch.arange(1, 10, dtype=torch.float64).div(10)[None, :, None, None].expand(1, 9, 6, 6)
    m1 = torch.full((1, 9, 6, 6), 0.5, dtype=torch.float64)
    m1[0, 0, :, 3] = 0.2  # first layer, tap 0, only in column 3
    zero = torch.zeros(1, 18, 6, 6, dtype=torch.float64)
    stack = [LayerSampling(zero, (3, 3), padding=(1, 1), mask=m1),
             LayerSampling(zero, (3, 3), padding=(1, 1), mask=m2)]
    pts, w = effective_sampling(stack, (2, 3))
    assert pts.shape == (81, 2) and w.shape == (81,)
    for k2 in range(9):
        for k1 in range(9):
            x1 = 3 + k2 % 3 - 1  # the column where the path enters the first layer
            want = (k2 + 1) / 10 * (0.2 if k1 == 0 and x1 == 3 else 0.5)
            assert w[k2 * 9 + k1].item() == pytest.approx(want, rel=1e-12), (k2, k1)
    # Without masks (v1, plain), every path counts 1.
    assert effective_sampling([s._replace(mask=None) for s in stack], (2, 3))[1].eq(1).all()


def test_weighted_spread():
    p = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    assert weighted_spread(p).item() == pytest.approx(1.0)
    assert weighted_spread(p, torch.tensor([3.0, 1.0])).item() == pytest.approx(0.75 ** 0.5)
    # The fixed 3x3x3 grid of the demo's last stage (stride 4): 8 px, the plain network's.
    zero = LayerSampling(torch.zeros(1, 18, 8, 8), (3, 3), padding=(1, 1))
    pts, w = effective_sampling([zero] * 3, (4, 4))
    assert weighted_spread(pts * 4, w).item() == pytest.approx(8.0)


def test_off_image_counts_points_outside_the_pixel_area():
    p = torch.tensor([[-0.5, 0.0], [-0.6, 3.0], [2.0, 9.5], [2.0, 9.6], [3.0, 3.0]])
    assert off_image(p, 10, 10).tolist() == [False, True, False, True, False]


def test_background_location_avoids_the_ink():
    from deformconv.demo.figures import background_location
    img = torch.zeros(32, 32)
    img[4:12, 3:10] = 1  # a blob in the top left
    y, x = background_location(img)
    assert min(y, x, 31 - y, 31 - x) >= 8
    assert math.hypot(y - 7.5, x - 6) > 15  # far from the blob
    assert img[int(y) - 4:int(y) + 6, int(x) - 4:int(x) + 6].max() == 0
    assert background_location(torch.ones(32, 32)) is None


def test_examples_follow_the_stated_rule():
    pytest.importorskip("sklearn")
    from deformconv.demo import LARGE, SMALL, demo_test_set, pick_examples
    from deformconv.demo.figures import background_location
    test = demo_test_set()
    rows = pick_examples(test)
    assert len(rows) == 2
    small_before = [i for i in range(rows[0][0]) if test.scale[i] < SMALL
                    and 8 <= test.centre[i].min() and test.centre[i].max() <= 23
                    and background_location(test.images[i, 0]) is not None]
    assert small_before == []  # the first ones in test order, as the caption says
    for small, large in rows:
        assert test.scale[small] < SMALL and test.scale[large] >= LARGE
        for i in (small, large):
            assert 8 <= test.centre[i].min() and test.centre[i].max() <= 23


def test_paired_difference_and_verdict():
    d = paired([0.01, 0.02, 0.03])
    assert d["mean"] == pytest.approx(0.02) and d["sd"] == pytest.approx(0.01)
    assert d["ci95"] == pytest.approx(4.30 * 0.01 / 3 ** 0.5)  # t(2 dof) = 4.30
    assert not d["separated"]  # 0.02 < 0.0248
    assert paired([0.02, 0.025, 0.03])["separated"]  # 0.025 > 0.0124
    assert not paired([0.03, -0.01, 0.01])["separated"]
    assert paired([0.03, -0.01, 0.01, 0.0])["positive"] == 2  # zero is not above zero
    assert not paired([0.5])["separated"]  # one seed separates nothing


def test_summary_says_when_accuracy_is_not_separated():
    runs = []
    for seed, (a_plain, a_def) in enumerate([(0.90, 0.93), (0.92, 0.91), (0.91, 0.92)]):
        runs.append({"seed": seed, "variant": "plain", "acc": a_plain})
        runs.append({"seed": seed, "variant": "deformable", "acc": a_def, "spread_small": 9.0,
                     "spread_large": 10.0 + 0.1 * seed, "spread_background": 11.0})
    s = summarize(runs)
    assert "NOT separated" in s["lines"][0]
    assert s["spread_growth"]["mean"] == pytest.approx(1.1) and s["spread_growth"]["separated"]
    assert s["background_minus_small"]["mean"] == pytest.approx(2.0)


def test_masks_are_interpolated_between_pixels():
    """The last layer shifts its taps by dy = 0.5, so the first layer's mask (a ramp in y) is
    read half-way between rows: 0.1 + 0.1 * y at y = 2 + (i2 - 1) + 0.5."""
    off2 = torch.zeros(1, 18, 6, 6, dtype=torch.float64)
    off2[:, 0::2] = 0.5
    ramp = 0.1 + 0.1 * torch.arange(6, dtype=torch.float64)
    m1 = ramp[None, None, :, None].expand(1, 9, 6, 6)
    m2 = torch.full((1, 9, 6, 6), 0.8, dtype=torch.float64)
    stack = [LayerSampling(torch.zeros_like(off2), (3, 3), padding=(1, 1), mask=m1),
             LayerSampling(off2, (3, 3), padding=(1, 1), mask=m2)]
    pts, w = effective_sampling(stack, (2, 3))
    i2 = torch.arange(81) // 9 // 3
    torch.testing.assert_close(w, 0.8 * (0.1 + 0.1 * (2 + (i2 - 1) + 0.5)).double())
    torch.testing.assert_close(pts[:, 0] % 1, torch.full((81,), 0.5, dtype=torch.float64))


def test_quick_runs_give_no_verdict():
    """A --quick run's numbers carry no conclusion: its summary and report say so instead of
    calling a difference separated."""
    runs = []
    for seed, (a_plain, a_def) in enumerate([(0.33, 0.17), (0.34, 0.18)]):
        runs.append({"seed": seed, "variant": "plain", "acc": a_plain})
        runs.append({"seed": seed, "variant": "deformable", "acc": a_def, "spread_small": 9.0,
                     "spread_large": 10.0 + 0.1 * seed, "spread_background": 11.0})
    assert "separated" in summarize(runs)["lines"][0]
    quick = summarize(runs, quick=True)
    assert "no verdict" in quick["lines"][0] and "separated" not in quick["lines"][0]
    assert "carry no conclusion" in quick["lines"][-1]
