"""The shared multilinear sampling (``deformconv.ops.bilinear``) against a float64 oracle written
from the conventions: values, the inclusive and strict lower cut-offs, hostile positions, the
deterministic scatter, and the position and scale gradients (one-sided, floor held constant)."""

import itertools

import pytest
import torch

from deformconv.ops import bilinear


def _oracle(x, positions, strict, scale=None):
    """x (B=1, *S, C) float64; positions R tensors (M,). Slow loops; autograd-able in the
    positions through the fractions (the floor is a constant)."""
    S = x.shape[1:-1]
    R = len(S)
    out = []
    M = positions[0].shape[0]
    for m in range(M):
        p = [positions[d][m] for d in range(R)]
        ok = all(bool(torch.isfinite(q)) for q in p) and all(
            ((q > -1) if strict else (q >= -1)) and q < s for q, s in zip(p, S))
        acc = torch.zeros(x.shape[-1], dtype=x.dtype)
        if ok:
            low = [int(torch.floor(q)) for q in p]
            f = [q - lo for q, lo in zip(p, low)]
            for bits in itertools.product((0, 1), repeat=R):
                c = [lo + u for lo, u in zip(low, bits)]
                if all(0 <= ci < s for ci, s in zip(c, S)):
                    w = 1.0
                    for fd, u in zip(f, bits):
                        w = w * (fd if u else 1 - fd)
                    acc = acc + w * x[(0, *c)]
            if scale is not None:
                acc = acc * scale[m]
        out.append(acc)
    return torch.stack(out)


def _positions(R, S, M, gen):
    pos = [(torch.rand(M, generator=gen, dtype=torch.float64) * (s + 3) - 2) for s in S]
    # Exact corner cases: the cut-offs, integers, hostile values.
    special = [-1.0, -1.0 + 1e-9, 0.0, S[0] - 1.0, S[0] - 1e-9, float(S[0]), float("nan"),
               float("inf"), -float("inf"), 1e30]
    pos[0][:len(special)] = torch.tensor(special, dtype=torch.float64)
    for d in range(1, R):
        pos[d][:len(special)] = 0.5
    return pos


@pytest.mark.parametrize("R", [1, 2, 3])
@pytest.mark.parametrize("strict", [False, True])
def test_sample_and_gradients_match_the_oracle(R, strict):
    gen = torch.Generator().manual_seed(R + 10 * strict)
    S = [5, 4, 3][:R]
    C, M = 3, 40
    x = torch.randn(1, *S, C, dtype=torch.float64, generator=gen)
    pos = _positions(R, S, M, gen)
    scale = torch.rand(M, dtype=torch.float64, generator=gen) + 0.5
    src = bilinear.bordered_source(x)
    plan = bilinear.corner_plan(pos, S, scale=scale, strict=strict)
    assert plan.index.min() >= 0 and plan.index.max() < src.shape[0]
    got = bilinear.sample(src, plan)
    ref = _oracle(x, pos, strict, scale)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert ref.abs().sum() > 1

    # Gradients against autograd through the oracle.
    gout = torch.randn(M, C, dtype=torch.float64, generator=gen)
    xr = x.clone().requires_grad_()
    pr = [p.clone().requires_grad_() for p in pos]
    sr = scale.clone().requires_grad_()
    (_oracle(xr, pr, strict, sr) * gout).sum().backward()
    g_src = torch.zeros_like(src)
    bilinear.scatter_rows(g_src, gout, plan)
    torch.testing.assert_close(bilinear.bordered_interior(g_src, 1, S), xr.grad,
                               rtol=1e-12, atol=1e-12)
    dots = bilinear.corner_dots(gout, src, plan)
    for d, g in enumerate(bilinear.position_grad(dots, plan)):
        ref_g = torch.nan_to_num(pr[d].grad) if pr[d].grad is not None else torch.zeros(M)
        torch.testing.assert_close(g, ref_g.to(g.dtype), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bilinear.scale_grad(dots, plan), sr.grad, rtol=1e-10,
                               atol=1e-12)


def test_strict_and_inclusive_differ_at_minus_one():
    """At exactly -1: value 0 both ways; the inclusive cut-off keeps the one-sided derivative
    I[0] - 0, the strict one has none."""
    x = torch.tensor([[[2.0], [3.0], [5.0]]], dtype=torch.float64)  # (1, 3, 1)
    src = bilinear.bordered_source(x)
    p = [torch.tensor([-1.0], dtype=torch.float64)]
    g = torch.ones(1, 1, dtype=torch.float64)
    for strict, want in ((False, 2.0), (True, 0.0)):
        plan = bilinear.corner_plan(p, (3,), strict=strict)
        assert bilinear.sample(src, plan).item() == 0.0
        (gp,) = bilinear.position_grad(bilinear.corner_dots(g, src, plan), plan)
        assert gp.item() == want


def test_base_and_rows_per_cell_address_groups_and_images():
    """Two images, two channel groups: rows viewed (-1, C/G) with base = b*cells*G + g."""
    gen = torch.Generator().manual_seed(3)
    B, S, C, G = 2, (4, 5), 4, 2
    x = torch.randn(B, *S, C, dtype=torch.float64, generator=gen)
    src = bilinear.bordered_source(x).view(-1, C // G)
    y = torch.rand(B, 6, G, dtype=torch.float64, generator=gen) * 4 - 0.5
    xx = torch.rand(B, 6, G, dtype=torch.float64, generator=gen) * 5 - 0.5
    cells = 6 * 7
    base = (torch.arange(B) * cells * G).view(B, 1, 1) + torch.arange(G)
    plan = bilinear.corner_plan((y, xx), S, base=base, rows_per_cell=G,
                                index_dtype=torch.int32)
    got = bilinear.sample(src, plan).view(B, 6, G, C // G)
    for b, g in itertools.product(range(B), range(G)):
        xs = x[b:b + 1, ..., g * (C // G):(g + 1) * (C // G)]
        ref = _oracle(xs, [y[b, :, g], xx[b, :, g]], False)
        torch.testing.assert_close(got[b, :, g], ref, rtol=1e-12, atol=1e-12)


def test_index_dtype_rule():
    assert bilinear.index_dtype(2 ** 31 - 2) == torch.int32
    assert bilinear.index_dtype(2 ** 31 - 1) == torch.int64
