"""ONNX export of ``ms_deform_attn`` as a decomposition into gathers (no ``GridSample``).

ONNX has no multi-scale deformable attention operator. Inside ``torch.onnx.export(...,
dynamo=True)`` the public function calls :func:`ms_deform_attn_decomposed` instead of the
registered op: standard tensor operations that the exporter turns into ``Gather``, ``Floor``,
``Where`` and arithmetic nodes, with the op's conventions (``docs/ms_deform_attn.md``). It reads
the level sizes and starts from the ``spatial_shapes`` and ``level_start_index`` tensors, so the
exported graph keeps them as inputs and N and Q may stay dynamic. It materialises the four
corners of every sample (``4 x N x Q x M x L x P x D`` values): fine for inference graphs,
not how the kernels work.
"""

from __future__ import annotations

import torch
from torch import Tensor


def exporting() -> bool:
    """True inside ``torch.onnx.export`` (the dynamo exporter's trace)."""
    return torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()


def ms_deform_attn_decomposed(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                              sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """The op from gathers and arithmetic only; output (N, Q, M*D) in ``value``'s dtype."""
    N, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    dt = torch.float64 if value.dtype == torch.float64 else torch.float32
    loc = sampling_locations.to(dt)
    att = attention_weights.to(dt)
    Hi = spatial_shapes[:, 0].view(1, 1, 1, L, 1).long()
    Wi = spatial_shapes[:, 1].view(1, 1, 1, L, 1).long()
    Hf, Wf = Hi.to(dt), Wi.to(dt)
    start = level_start_index.view(1, 1, 1, L, 1).long()
    h = loc[..., 1] * Hf - 0.5
    w = loc[..., 0] * Wf - 0.5
    inside = (h > -1) & (h < Hf) & (w > -1) & (w < Wf)
    h = torch.where(inside, h, torch.zeros_like(h))
    w = torch.where(inside, w, torch.zeros_like(w))
    h0f, w0f = torch.floor(h), torch.floor(w)
    lh, lw = h - h0f, w - w0f
    h0, w0 = h0f.long(), w0f.long()
    a = torch.where(inside, att, torch.zeros_like(att))
    n = torch.arange(N, device=value.device).view(N, 1, 1, 1, 1)
    m = torch.arange(M, device=value.device).view(1, 1, M, 1, 1)
    table = value.to(dt).reshape(N * S * M, D)
    out = torch.zeros(N, Q, M, D, dtype=dt, device=value.device)
    for dh, dw, wt in ((0, 0, (1 - lh) * (1 - lw)), (0, 1, (1 - lh) * lw),
                       (1, 0, lh * (1 - lw)), (1, 1, lh * lw)):
        hh, ww = h0 + dh, w0 + dw
        ok = (hh >= 0) & (hh < Hi) & (ww >= 0) & (ww < Wi)
        row = torch.where(ok, start + hh * Wi + ww, torch.zeros_like(hh))
        flat = ((n * S + row) * M + m).reshape(-1)
        corner = table.index_select(0, flat).view(N, Q, M, L * P, D)
        coef = torch.where(ok, wt * a, torch.zeros_like(wt)).view(N, Q, M, L * P, 1)
        out = out + (corner * coef).sum(3)
    return out.reshape(N, Q, M * D).to(value.dtype)
