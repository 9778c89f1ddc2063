"""The float64 oracle of deformable convolution (1-, 2- and 3-D), written from the conventions
(``docs/conventions.md``).

Slow and obvious on purpose, and independent of the kernels: loops over offset groups, kernel
taps and the ``2^R`` corners, vectorised over batch and output positions. Every fast path is
checked against it. Its gradients come from autograd through the formula: with ``floor`` held
constant autograd yields exactly the floor-based one-sided derivative the conventions
prescribe (``+I[0]`` at exactly ``-1``), and masked-out corners give zero gradient.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor


def _tuple(v, R):
    return (v,) * R if isinstance(v, int) else tuple(v)


def sample(img: Tensor, pos) -> Tensor:
    """Multilinear sample of ``img`` (N, Cg, *S) at positions ``pos`` (R tensors (N, *o)).

    Zero when any ``p_d <= -1`` or ``p_d >= S_d`` or non-finite; each corner outside counts
    as 0. ``p_d == -1`` is kept "inside" (its value is 0 all the same) so that autograd gives
    the one-sided derivative there.
    """
    N, Cg, *S = img.shape
    inside = torch.ones_like(pos[0], dtype=torch.bool)
    for p, s in zip(pos, S):
        inside = inside & (p >= -1) & (p < s)
    pos = [torch.where(inside, p, torch.zeros_like(p)) for p in pos]
    low = [torch.floor(p).detach() for p in pos]
    frac = [p - l for p, l in zip(pos, low)]
    out = img.new_zeros(N, Cg, *pos[0].shape[1:])
    n_idx = torch.arange(N).view(N, *[1] * len(pos[0].shape[1:])).unsqueeze(1)
    c_idx = torch.arange(Cg).view(1, Cg, *[1] * len(pos[0].shape[1:]))
    for corner in itertools.product((0, 1), repeat=len(S)):
        w = torch.ones_like(frac[0])
        ok = inside.clone()
        index = []
        for u, l, f, s in zip(corner, low, frac, S):
            q = l + u
            w = w * (f if u else 1 - f)
            ok = ok & (q >= 0) & (q <= s - 1)
            index.append(q)
        index = [torch.where(ok, q, torch.zeros_like(q)).long().unsqueeze(1) for q in index]
        v = img[(n_idx, c_idx, *index)]
        out = out + torch.where(ok.unsqueeze(1), w.unsqueeze(1) * v, torch.zeros_like(v))
    return out


def deform_conv_ref(input: Tensor, offset: Tensor, weight: Tensor, bias=None, stride=1,
                    padding=0, dilation=1, mask=None) -> Tensor:
    """The oracle for ``R = input.dim() - 2`` spatial dimensions, with the signature of
    ``deform_conv{R}d`` (torchvision's in 2-D). Differentiable by autograd."""
    N, C, *S = input.shape
    O, Cg, *k = weight.shape
    R = len(S)
    st, pd, dl = _tuple(stride, R), _tuple(padding, R), _tuple(dilation, R)
    K = math.prod(k)
    groups = C // Cg
    G = offset.shape[1] // (R * K)
    Cpg = C // G
    o = [(S[d] + 2 * pd[d] - dl[d] * (k[d] - 1) - 1) // st[d] + 1 for d in range(R)]
    coords = []
    for d in range(R):
        shape = [1] * (R + 1)
        shape[1 + d] = o[d]
        coords.append(torch.arange(o[d], dtype=input.dtype).view(shape) * st[d] - pd[d])
    per_group = []
    for g in range(G):
        taps = []
        for t_index, t in enumerate(itertools.product(*(range(v) for v in k))):
            pos = [coords[d] + t[d] * dl[d] + offset[:, (g * K + t_index) * R + d]
                   for d in range(R)]
            s = sample(input[:, g * Cpg:(g + 1) * Cpg], pos)
            if mask is not None:
                s = s * mask[:, g * K + t_index].unsqueeze(1)
            taps.append(s)
        per_group.append(torch.stack(taps, dim=2))  # (N, Cpg, K, *o)
    cols = torch.cat(per_group, dim=1)  # (N, C, K, *o)
    # (N, groups, Cg, K, *o) against (groups, O/groups, Cg, K): one contraction per group.
    cols = cols.view(N, groups, Cg, K, *o)
    out = torch.einsum("ngck...,gock->ngo...", cols, weight.reshape(groups, O // groups, Cg, K))
    out = out.reshape(N, O, *o)
    if bias is not None:
        out = out + bias.view(1, O, *[1] * R)
    return out
