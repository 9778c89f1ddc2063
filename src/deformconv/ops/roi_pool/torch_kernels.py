"""Pure-PyTorch kernels of deformable RoI pooling (any device).

Vectorised over regions, bins, samples and channels; regions are processed in chunks so the
``(samples, C)`` tiles stay under :data:`CHUNK_ELEMENTS` elements whatever the number of
regions. The input is read channels-last, ``(N*H*W, C)``. Pooling is linear in the input: a
chunk is a sparse ``(bins, N*H*W)`` matrix of corner weights (four per sample), so the forward
is one sparse-dense product and the input gradient its transpose (CPU and CUDA; a gather and
an ``index_add_`` elsewhere). The offset gradient gathers the corner rows. float16/bfloat16
compute in float32, float32 and float64 in their own precision. Arguments are assumed valid
(the public function checks them).

Bounded work for any region. A sample contributes only when ``-1 <= y <= H`` and
``-1 <= x <= W``; along each axis the samples of a bin are evenly spaced, so the indices that
can fall in that range form one interval, computed in closed form (:func:`sample_window`) and
widened by :data:`WINDOW_MARGIN` samples plus the positions' rounding error. Only that window
is enumerated: a region 1e30 pixels wide costs what a region the size of the image costs,
with the same result
as enumerating its whole grid. The adaptive grid (``ceil(size / bins)``) is capped at
:data:`GRID_LIMIT` samples per axis and is 0 when that ratio is not finite (NaN or infinite
coordinates): such a region has no samples and pools to 0. Non-finite sample positions are
outside the image. Indices are clamped into the image before any gather, so nothing reads or
writes out of bounds.
"""

from __future__ import annotations

import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor

GRID_LIMIT = 1 << 24          # adaptive samples per bin and axis, at most
WINDOW_MARGIN = 2             # samples added on each side of the closed-form window
CHUNK_ELEMENTS = 1 << 22      # gathered samples x channels per chunk of regions


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def grid_size(extent_per_bin: Tensor, sampling_ratio: int) -> Tensor:
    """Samples per bin along one axis, (R,) int64: ``sampling_ratio`` if positive, else
    ``ceil(extent_per_bin)`` (0 when not finite or not positive, at most GRID_LIMIT)."""
    if sampling_ratio > 0:
        return torch.full(extent_per_bin.shape, sampling_ratio, dtype=torch.int64,
                          device=extent_per_bin.device)
    g = torch.ceil(extent_per_bin)
    ok = torch.isfinite(g) & (g > 0)
    return torch.where(ok, g.clamp(max=GRID_LIMIT), torch.zeros_like(g)).long()


def sample_window(start: Tensor, step: Tensor, grid: Tensor, size: int,
                  eps: float) -> Tuple[Tensor, Tensor]:
    """First index and count of the samples ``start + (k + 0.5) * step``, ``0 <= k < grid``,
    that may lie in ``[-1, size]``: int64 tensors of ``start``'s shape (``step`` and ``grid``
    broadcast against it).

    A superset: the exact interval (computed in float64) widened by WINDOW_MARGIN samples plus
    the rounding error of positions computed with machine epsilon ``eps``
    (``eps * (|start| + |step| * grid) / |step|`` samples), so that a position the kernel
    rounds into the image is never left out.
    """
    a = start.double()
    s = step.double().expand_as(a)
    gmax = grid.expand_as(a).to(torch.float64)
    finite = torch.isfinite(a) & torch.isfinite(s)
    flat = s == 0
    s_safe = torch.where(flat | ~finite, torch.ones_like(s), s).abs()
    a_safe = torch.where(finite, a, torch.zeros_like(a))
    sgn = torch.where(s < 0, -1.0, 1.0)
    t1 = sgn * (-1.0 - a_safe) / s_safe - 0.5
    t2 = sgn * (size - a_safe) / s_safe - 0.5
    bound = float(GRID_LIMIT + 2 * WINDOW_MARGIN)
    margin = (eps * (a_safe.abs() + s_safe * gmax + size) / s_safe).clamp(max=bound)
    margin = torch.ceil(margin) + WINDOW_MARGIN
    lo = torch.ceil(torch.minimum(t1, t2)).clamp(-bound, bound) - margin
    hi = torch.floor(torch.maximum(t1, t2)).clamp(-bound, bound) + margin
    lo = torch.where(flat, torch.zeros_like(lo), lo.clamp_min(0))
    hi = torch.where(flat, gmax - 1, torch.minimum(hi, gmax - 1))
    n = torch.where(finite, (hi - lo + 1).clamp_min(0), torch.zeros_like(hi))
    return lo.long(), n.long()


class Geometry:
    """Per-region and per-bin sampling geometry in the compute dtype ``ct``.

    ``y0``/``x0`` (R, ph, pw): the bin's first edge (start + offset shift + bin index * bin
    size); ``step_y``/``step_x`` (R, 1, 1): sample spacing; ``gh``/``gw`` (R,) grid sizes;
    ``count`` (R,) the divisor; ``batch`` (R,) the image index, ``valid`` (R,) whether it is
    inside ``[0, N)``; ``lo_y``, ``n_y`` (R, ph, pw) the window along y, likewise x.
    """

    def __init__(self, rois: Tensor, offset: Optional[Tensor], N: int, H: int, W: int,
                 ph: int, pw: int, spatial_scale: float, sampling_ratio: int, gamma: float,
                 ct: torch.dtype):
        r = rois.to(ct)
        b = torch.trunc(r[:, 0])
        self.valid = (b >= 0) & (b < N)          # False for NaN
        self.batch = torch.where(self.valid, b, torch.zeros_like(b)).long()
        xs = r[:, 1] * spatial_scale - 0.5
        ys = r[:, 2] * spatial_scale - 0.5
        self.roi_w = (r[:, 3] * spatial_scale - 0.5) - xs
        self.roi_h = (r[:, 4] * spatial_scale - 0.5) - ys
        R = r.shape[0]
        self.bin_w = (self.roi_w / pw).view(R, 1, 1)
        self.bin_h = (self.roi_h / ph).view(R, 1, 1)
        self.gh = torch.where(self.valid, grid_size(self.roi_h / ph, sampling_ratio), 0)
        self.gw = torch.where(self.valid, grid_size(self.roi_w / pw, sampling_ratio), 0)
        self.count = (self.gh * self.gw).clamp_min(1).to(ct)
        ys = ys.view(R, 1, 1).expand(R, ph, pw)
        xs = xs.view(R, 1, 1).expand(R, ph, pw)
        if offset is not None:
            o = offset.to(ct)
            xs = xs + gamma * self.roi_w.view(R, 1, 1) * o[:, 0]
            ys = ys + gamma * self.roi_h.view(R, 1, 1) * o[:, 1]
        ii = torch.arange(ph, device=r.device, dtype=ct).view(1, ph, 1)
        jj = torch.arange(pw, device=r.device, dtype=ct).view(1, 1, pw)
        self.y0 = ys + ii * self.bin_h
        self.x0 = xs + jj * self.bin_w
        self.ghf = self.gh.clamp_min(1).to(ct).view(R, 1, 1)
        self.gwf = self.gw.clamp_min(1).to(ct).view(R, 1, 1)
        eps = torch.finfo(ct).eps
        self.lo_y, self.n_y = sample_window(self.y0, self.bin_h / self.ghf,
                                            self.gh.view(R, 1, 1), H, eps)
        self.lo_x, self.n_x = sample_window(self.x0, self.bin_w / self.gwf,
                                            self.gw.view(R, 1, 1), W, eps)

    def chunks(self, C: int) -> List[Tuple[int, int, int, int]]:
        """(first, end, Ty, Tx): consecutive regions whose gathered tile fits CHUNK_ELEMENTS."""
        R = self.n_y.shape[0]
        if R == 0:
            return []
        ty = self.n_y.reshape(R, -1).amax(1).tolist()
        tx = self.n_x.reshape(R, -1).amax(1).tolist()
        per_bin = self.n_y.shape[1] * self.n_y.shape[2] * max(C, 1)
        out = []
        first, my, mx = 0, 0, 0
        for r in range(R):
            ny, nx = max(my, ty[r]), max(mx, tx[r])
            if r > first and (r + 1 - first) * ny * nx * per_bin > CHUNK_ELEMENTS:
                out.append((first, r, my, mx))
                first, ny, nx = r, ty[r], tx[r]
            my, mx = ny, nx
        out.append((first, R, my, mx))
        return out


def _axis(start, bin_size, grid_f, lo, n, T, size):
    """Sample coordinates along one axis for a chunk: (..., T) each.

    Returns the unclamped coordinate, the in-range flag, the clamped low/high indices and the
    fractional weight of the high index.
    """
    t = torch.arange(T, device=start.device)
    k = lo.unsqueeze(-1) + t
    ok = t < n.unsqueeze(-1)
    v = start.unsqueeze(-1) + ((k.to(start.dtype) + 0.5) * bin_size.unsqueeze(-1)) \
        / grid_f.unsqueeze(-1)
    ok = ok & (v >= -1) & (v <= size)         # False for NaN
    vc = torch.where(ok, v, torch.zeros_like(v)).clamp_min(0)
    low = torch.floor(vc)
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    vc = torch.where(edge, low, vc)
    high = torch.where(edge, low, low + 1)
    return v, ok, low.long(), high.long(), vc - low


def _entries(g: Geometry, a: int, e: int, Ty: int, Tx: int, H: int, W: int):
    """The chunk's sparse entries: columns (corner rows into (N*H*W, C)) and values (corner
    weight / count), bin-major, (bins * Ty * Tx * 4,) each; plus the plan: the corner rows,
    weights, in-range flags and positions of the samples, (Rc, ph, pw, Ty, Tx)."""
    sl = slice(a, e)
    y, oky, yl, yh, ly = _axis(g.y0[sl], g.bin_h[sl], g.ghf[sl], g.lo_y[sl], g.n_y[sl], Ty, H)
    x, okx, xl, xh, lx = _axis(g.x0[sl], g.bin_w[sl], g.gwf[sl], g.lo_x[sl], g.n_x[sl], Tx, W)
    ok = oky.unsqueeze(-1) & okx.unsqueeze(-2) & g.valid[sl].view(-1, 1, 1, 1, 1)
    base = (g.batch[sl] * (H * W)).view(-1, 1, 1, 1, 1)
    yl, yh, ly = (t.unsqueeze(-1) for t in (yl, yh, ly))
    xl, xh, lx = (t.unsqueeze(-2) for t in (xl, xh, lx))
    rows = (base + yl * W + xl, base + yl * W + xh, base + yh * W + xl, base + yh * W + xh)
    okf = ok.to(ly.dtype)
    hy, hx = (1 - ly), (1 - lx)
    weights = (hy * hx * okf, hy * lx * okf, ly * hx * okf, ly * lx * okf)
    cols = torch.stack(rows, -1).reshape(-1)
    vals = (torch.stack(weights, -1) / g.count[sl].view(-1, 1, 1, 1, 1, 1)).reshape(-1)
    return cols, vals, (rows, weights, ok, (y.unsqueeze(-1), x.unsqueeze(-2), yl, yh, xl, xh))


def _features(input: Tensor, ct: torch.dtype) -> Tensor:
    N, C, H, W = input.shape
    # contiguous: with N == 1 the reshape is a strided view, and row gathers crawl on it
    return input.permute(0, 2, 3, 1).reshape(N * H * W, C).to(ct).contiguous()


SPARSE_DEVICES = ("cpu", "cuda")  # where the sparse products of _pool and _scatter run


def _pool(feat: Tensor, cols: Tensor, vals: Tensor, bins: int) -> Tensor:
    """(bins, C): row b = sum over its k entries of vals * feat[cols] (cols, vals: (bins*k,)).

    A CSR sparse-dense product where sparse kernels exist (one row per bin, its samples'
    corner weights as entries: no (samples, C) tile is formed), else a gather and a sum."""
    k = cols.numel() // max(bins, 1)
    if feat.device.type in SPARSE_DEVICES:
        crow = torch.arange(0, bins * k + 1, k, device=feat.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
            m = torch.sparse_csr_tensor(crow, cols, vals, size=(bins, feat.shape[0]),
                                        check_invariants=False)
            return m @ feat
    return (feat.index_select(0, cols).view(bins, k, -1) * vals.view(bins, k, 1)).sum(1)


def _scatter(g_in: Tensor, cols: Tensor, vals: Tensor, g_bins: Tensor) -> None:
    """g_in[cols[e]] += vals[e] * g_bins[e // k]: the transpose of :func:`_pool`."""
    bins = g_bins.shape[0]
    k = cols.numel() // max(bins, 1)
    rows = torch.arange(bins, device=cols.device).repeat_interleave(k)
    if g_in.device.type in SPARSE_DEVICES:
        m = torch.sparse_coo_tensor(torch.stack([cols, rows]), vals, (g_in.shape[0], bins),
                                    check_invariants=False)
        g_in += torch.sparse.mm(m, g_bins)
    else:
        g_in.index_add_(0, cols, g_bins.index_select(0, rows) * vals.unsqueeze(1))


def deform_roi_pool_fwd(input: Tensor, rois: Tensor, offset: Optional[Tensor], ph: int,
                        pw: int, spatial_scale: float, sampling_ratio: int,
                        gamma: float) -> Tensor:
    """(N, C, H, W), (R, 5), (R, 2, ph, pw) or None -> (R, C, ph, pw) of the input's dtype."""
    N, C, H, W = input.shape
    R = rois.shape[0]
    ct = compute_dtype(input.dtype)
    out = torch.zeros(R, ph, pw, C, dtype=ct, device=input.device)
    if R and C:
        g = Geometry(rois, offset, N, H, W, ph, pw, spatial_scale, sampling_ratio, gamma, ct)
        feat = _features(input, ct)
        for a, e, Ty, Tx in g.chunks(C):
            if Ty == 0 or Tx == 0:
                continue
            cols, vals, _ = _entries(g, a, e, Ty, Tx, H, W)
            out[a:e] = _pool(feat, cols, vals, (e - a) * ph * pw).view(e - a, ph, pw, C)
    return out.permute(0, 3, 1, 2).to(input.dtype).contiguous()


def deform_roi_pool_bwd(grad_out: Tensor, input: Tensor, rois: Tensor, offset: Optional[Tensor],
                        ph: int, pw: int, spatial_scale: float, sampling_ratio: int,
                        gamma: float, need_input: bool,
                        need_offset: bool) -> Tuple[Tensor, Tensor]:
    """(grad_input, grad_offset); an empty tensor for a gradient not asked for.

    The input gradient scatters each in-range sample's four weights; the offset gradient
    follows mmcv's rule (``docs/conventions.md``, "Deformable RoI pooling").
    """
    N, C, H, W = input.shape
    R = rois.shape[0]
    ct = compute_dtype(input.dtype)
    need_offset = need_offset and offset is not None
    g_in = torch.zeros(N * H * W, C, dtype=ct, device=input.device) if need_input else None
    g_off = torch.zeros(R, 2, ph, pw, dtype=ct, device=input.device) if need_offset else None
    if R and C and (need_input or need_offset):
        g = Geometry(rois, offset, N, H, W, ph, pw, spatial_scale, sampling_ratio, gamma, ct)
        feat = _features(input, ct) if need_offset else None
        go = grad_out.to(ct).permute(0, 2, 3, 1)                  # (R, ph, pw, C)
        for a, e, Ty, Tx in g.chunks(C):
            if Ty == 0 or Tx == 0:
                continue
            cols, vals, plan = _entries(g, a, e, Ty, Tx, H, W)
            rows, weights, ok, (y, x, yl, yh, xl, xh) = plan
            if need_input:
                _scatter(g_in, cols, vals, go[a:e].reshape(-1, C))
            if need_offset:
                gb = (go[a:e] / g.count[a:e].view(-1, 1, 1, 1)).unsqueeze(3).unsqueeze(3)
                # v_k: upstream gradient . corner value, per sample
                v00, v01, v10, v11 = (
                    (feat.index_select(0, idx.reshape(-1)).view(*idx.shape, C) * gb).sum(-1)
                    for idx in rows)
                dx = (yh - y) * (v01 - v00) + (y - yl) * (v11 - v10)
                dy = (xh - x) * (v10 - v00) + (x - xl) * (v11 - v01)
                zero = torch.zeros_like(dx)
                sx = torch.where(ok, dx, zero).sum((3, 4))
                sy = torch.where(ok, dy, zero).sum((3, 4))
                # where no sample is in range the region may be infinite: 0, not inf * 0
                hit = ok.any(-1).any(-1)
                g_off[a:e, 0] = torch.where(hit, gamma * g.roi_w[a:e].view(-1, 1, 1) * sx, 0.0)
                g_off[a:e, 1] = torch.where(hit, gamma * g.roi_h[a:e].view(-1, 1, 1) * sy, 0.0)
    empty = input.new_empty(0)
    gi = (g_in.view(N, H, W, C).permute(0, 3, 1, 2).to(input.dtype).contiguous()
          if need_input else empty)
    go_ = g_off.to(input.dtype) if need_offset else empty
    return gi, go_
