"""Multi-scale deformable attention modules whose state dicts are those of the checkpoints
people have: mmcv's ``MultiScaleDeformableAttention``, Deformable DETR's ``MSDeformAttn`` and
transformers' ``DeformableDetrMultiscaleDeformableAttention``.

All three hold the same four linear layers (``sampling_offsets``, ``attention_weights``,
``value_proj``, ``output_proj``) with the same row orders (offsets ``(head, level, point, xy)``,
weights ``(head, level, point)``) and the same initialisation, so they share one base,
:class:`_MSDeformAttnBase`; each subclass keeps its upstream's constructor and forward
conventions (where the residual and dropout are, which way a padding mask points, the batch
layout).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..ops.ms_deform_attn import ms_deform_attn

# Argument names of each module's forward, by role (query, value, reference_points,
# spatial_shapes, level_start_index, padding mask), so errors name what the caller passed.
_MMCV_NAMES = ("query", "value", "reference_points", "spatial_shapes", "level_start_index",
               "key_padding_mask")
_DETR_NAMES = ("query", "input_flatten", "reference_points", "input_spatial_shapes",
               "input_level_start_index", "input_padding_mask")
_HF_NAMES = ("hidden_states", "encoder_hidden_states", "reference_points", "spatial_shapes",
             "level_start_index", "attention_mask")


def _check_tensor(name: str, t, what: str) -> None:
    if t is None:
        raise TypeError(f"{name} is required: {what}, got None")
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor ({what}), got {type(t).__name__}")


def _check_sequence(name: str, t, layout: str, dims: int) -> None:
    """``t`` a 3-D Tensor laid out as ``layout`` whose last dimension is ``dims``."""
    what = f"{layout} with E = embed_dims = {dims}"
    _check_tensor(name, t, what)
    if t.dim() != 3 or t.shape[-1] != dims:
        raise ValueError(f"{name} must be {what}, got shape {tuple(t.shape)}")


def _possessive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


def _check_broadcast(name: str, t, target: str, shape: torch.Size) -> None:
    """``t`` a Tensor that broadcasts to ``shape`` (that of ``target``) without changing it."""
    ok = isinstance(t, Tensor) and t.dim() <= len(shape) and all(
        a in (1, b) for a, b in zip(t.shape[::-1], shape[::-1]))
    if not ok:
        got = f"shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a Tensor of {_possessive(target)} shape "
                         f"{tuple(shape)} (or one broadcasting to it), got {got}")


def _start_index(spatial_shapes: Tensor) -> Tensor:
    """The running sum of H*W over the levels, starting at 0 (``level_start_index``)."""
    sizes = spatial_shapes.prod(1)
    return torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))


class _MSDeformAttnBase(nn.Module):
    """The four projections, their initialisation and the attention core."""

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int,
                 value_dims: Optional[int] = None, im2col_step: int = 64):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims must be divisible by num_heads, got {embed_dims} and "
                             f"{num_heads}")
        value_dims = embed_dims if value_dims is None else value_dims
        if value_dims % num_heads:
            raise ValueError(f"the value projection's size ({value_dims}) must be divisible by "
                             f"num_heads ({num_heads})")
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.im2col_step = im2col_step
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, value_dims)
        self.output_proj = nn.Linear(value_dims, embed_dims)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The upstream initialisation: zero offset weights, offset biases pointing head ``m``
        in direction ``m * 2*pi / M`` (scaled so the larger coordinate is 1) at distances
        ``1..P`` on every level, zero attention weights (uniform after the softmax), xavier
        uniform projections with zero biases."""
        M, L, P = self.num_heads, self.num_levels, self.num_points
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(M, dtype=torch.float32) * (2.0 * math.pi / M)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(M, 1, 1, 2).repeat(1, L, P, 1)
        grid = grid * torch.arange(1, P + 1, dtype=torch.float32).view(1, 1, P, 1)
        self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def reset_parameters(self) -> None:
        self.init_weights()

    def _check_inputs(self, names: Tuple[str, ...], query: Tensor, value: Tensor,
                      reference_points, spatial_shapes, level_start_index, mask,
                      mask_dtype: Optional[torch.dtype] = torch.bool) -> None:
        """Check the batch-first ``query (N, Q, E)`` and ``value (N, S, E)`` (their rank and
        channels checked already) and the other inputs against them and the module's sizes;
        ``names`` are the caller's argument names. Shapes only: nothing reads a tensor's
        values, so this stays out of a compiled graph's way."""
        q_name, v_name, r_name, s_name, i_name, m_name = names
        N, Q, _ = query.shape
        S = value.shape[1]
        L = self.num_levels
        if value.shape[0] != N:
            raise ValueError(f"{_possessive(v_name)} batch size must be "
                             f"{_possessive(q_name)}, {N}, got {value.shape[0]}")
        want = (f"(N, Q, num_levels, 2) points or (N, Q, num_levels, 4) boxes = ({N}, {Q}, {L}, "
                f"2 or 4); a size 1 in the first three broadcasts")
        _check_tensor(r_name, reference_points, want)
        if (reference_points.dim() != 4 or reference_points.shape[3] not in (2, 4)
                or not all(a in (1, b) for a, b in zip(reference_points.shape[:3], (N, Q, L)))):
            raise ValueError(f"{r_name} must be {want}, got shape "
                             f"{tuple(reference_points.shape)}")
        want = f"(num_levels, 2) = ({L}, 2) of (H, W) rows"
        _check_tensor(s_name, spatial_shapes, want)
        if tuple(spatial_shapes.shape) != (L, 2):
            raise ValueError(f"{s_name} must be {want}, got shape {tuple(spatial_shapes.shape)}")
        if level_start_index is not None:
            want = f"(num_levels,) = ({L},) (the first row of each level in {v_name})"
            _check_tensor(i_name, level_start_index, want)
            if tuple(level_start_index.shape) != (L,):
                raise ValueError(f"{i_name} must be {want}, got shape "
                                 f"{tuple(level_start_index.shape)}")
        if mask is not None:
            want = f"(N, S) = ({N}, {S}) (one flag per row of {v_name})"
            _check_tensor(m_name, mask, want)
            if tuple(mask.shape) != (N, S):
                raise ValueError(f"{m_name} must be {want}, got shape {tuple(mask.shape)}")
            if mask_dtype is not None and mask.dtype != mask_dtype:
                raise TypeError(f"{m_name} must be a {mask_dtype} Tensor, got {mask.dtype}")

    def _attend(self, query: Tensor, value: Tensor, reference_points: Tensor,
                spatial_shapes: Tensor, level_start_index: Optional[Tensor],
                drop: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Batch-first ``query (N, Q, E)``, ``value (N, S, E)``; ``drop (N, S)`` True where a
        value row is zeroed; ``level_start_index`` None: computed from ``spatial_shapes``.
        Returns ``(output_proj(out), attention_weights)``."""
        if level_start_index is None:
            level_start_index = _start_index(spatial_shapes)
        N, Q, _ = query.shape
        S = value.shape[1]
        M, L, P = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value)
        if drop is not None:
            value = value.masked_fill(drop[..., None], 0.0)
        value = value.view(N, S, M, -1)
        offsets = self.sampling_offsets(query).view(N, Q, M, L, P, 2)
        weights = self.attention_weights(query).view(N, Q, M, L * P).softmax(-1)
        weights = weights.view(N, Q, M, L, P)
        if reference_points.shape[-1] == 2:
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            loc = (reference_points[:, :, None, :, None, :]
                   + offsets / normalizer[None, None, None, :, None, :])
        elif reference_points.shape[-1] == 4:
            loc = (reference_points[:, :, None, :, None, :2]
                   + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points must end in 2 (points) or 4 (boxes) "
                             f"coordinates, got shape {tuple(reference_points.shape)}")
        out = ms_deform_attn(value, spatial_shapes, level_start_index, loc.to(value.dtype),
                             weights.to(value.dtype))
        return self.output_proj(out), weights


class MultiScaleDeformableAttention(_MSDeformAttnBase):
    """mmcv's ``MultiScaleDeformableAttention``: same constructor, forward, initialisation and
    state dict (loads mmcv checkpoints with ``strict=True``), on every device.

    Args:
        embed_dims (int): E.
        num_heads (int): M.
        num_levels (int): L.
        num_points (int): P.
        im2col_step (int): kept for compatibility; no effect.
        dropout (float): dropout on the output, before the residual.
        batch_first (bool): inputs ``(N, Q, E)`` if True, else ``(Q, N, E)``.
        norm_cfg, init_cfg: kept for compatibility (mmcv's ``BaseModule`` arguments); unused.
        value_proj_ratio (float): the value projection has ``int(E * ratio)`` channels.

    Example:
        >>> import torch
        >>> attn = MultiScaleDeformableAttention(32, 4, 2, 2, batch_first=True)
        >>> shapes = torch.tensor([[6, 8], [3, 4]])
        >>> query = torch.randn(2, 60, 32)
        >>> ref = torch.rand(2, 60, 2, 2)
        >>> attn(query, reference_points=ref, spatial_shapes=shapes,
        ...      level_start_index=torch.tensor([0, 48])).shape
        torch.Size([2, 60, 32])
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4, im2col_step: int = 64, dropout: float = 0.1,
                 batch_first: bool = False, norm_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None, value_proj_ratio: float = 1.0):
        super().__init__(embed_dims, num_heads, num_levels, num_points,
                         int(embed_dims * value_proj_ratio), im2col_step)
        self.dropout = nn.Dropout(dropout)
        self.batch_first = batch_first
        self.norm_cfg, self.init_cfg = norm_cfg, init_cfg

    def forward(self, query: Tensor, key: Optional[Tensor] = None,
                value: Optional[Tensor] = None, identity: Optional[Tensor] = None,
                query_pos: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None,
                reference_points: Optional[Tensor] = None,
                spatial_shapes: Optional[Tensor] = None,
                level_start_index: Optional[Tensor] = None, **kwargs) -> Tensor:
        """mmcv's forward: ``value`` and ``identity`` default to ``query``, ``query_pos`` is
        added to the query only, ``key_padding_mask`` True marks padded value rows (zeroed),
        ``reference_points`` ``(N, Q, L, 2)`` points or ``(N, Q, L, 4)`` boxes (cx, cy, w, h),
        normalised; ``level_start_index`` defaults to the running sum of H*W over
        ``spatial_shapes``. ``key`` is unused. Returns ``dropout(output_proj(out)) +
        identity``."""
        layout = "(N, Q, E)" if self.batch_first else "(Q, N, E)"
        _check_sequence("query", query, layout, self.embed_dims)
        if value is None:
            value = query
        else:
            _check_sequence("value", value, layout.replace("Q", "S"), self.embed_dims)
        if identity is None:
            identity = query
        else:
            _check_broadcast("identity", identity, "query", query.shape)
        if query_pos is not None:
            _check_broadcast("query_pos", query_pos, "query", query.shape)
            query = query + query_pos
        if not self.batch_first:
            query, value = query.permute(1, 0, 2), value.permute(1, 0, 2)
        self._check_inputs(_MMCV_NAMES, query, value, reference_points, spatial_shapes,
                           level_start_index, key_padding_mask)
        out, _ = self._attend(query, value, reference_points, spatial_shapes,
                              level_start_index, key_padding_mask)
        if not self.batch_first:
            out = out.permute(1, 0, 2)
        return self.dropout(out) + identity


class MSDeformAttn(_MSDeformAttnBase):
    """Deformable DETR's ``MSDeformAttn(d_model, n_levels, n_heads, n_points)``: its state
    dict, initialisation and forward (batch first, no residual, no dropout)."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8,
                 n_points: int = 4):
        super().__init__(d_model, n_heads, n_levels, n_points)
        self.d_model, self.n_levels, self.n_heads, self.n_points = (d_model, n_levels, n_heads,
                                                                    n_points)

    def _reset_parameters(self) -> None:
        self.init_weights()

    def forward(self, query: Tensor, reference_points: Tensor, input_flatten: Tensor,
                input_spatial_shapes: Tensor, input_level_start_index: Tensor,
                input_padding_mask: Optional[Tensor] = None) -> Tensor:
        """``query (N, Q, E)``, ``input_flatten (N, S, E)``; ``input_padding_mask`` True marks
        padding. Returns ``output_proj(out)`` of shape ``(N, Q, E)``."""
        _check_sequence("query", query, "(N, Q, E)", self.embed_dims)
        _check_sequence("input_flatten", input_flatten, "(N, S, E)", self.embed_dims)
        if input_level_start_index is None:
            raise TypeError("input_level_start_index is required: a Tensor (n_levels,), got "
                            "None")
        self._check_inputs(_DETR_NAMES, query, input_flatten, reference_points,
                           input_spatial_shapes, input_level_start_index, input_padding_mask)
        return self._attend(query, input_flatten, reference_points, input_spatial_shapes,
                            input_level_start_index, input_padding_mask)[0]


class DeformableDetrMultiscaleDeformableAttention(_MSDeformAttnBase):
    """transformers' ``DeformableDetrMultiscaleDeformableAttention(config, num_heads,
    n_points)``: its state dict and forward (``attention_mask`` True means *keep*; returns
    ``(output_proj(out), attention_weights)``). A drop-in replacement inside a transformers
    Deformable DETR model, whatever the device."""

    def __init__(self, config, num_heads: int, n_points: int):
        super().__init__(config.d_model, num_heads, config.num_feature_levels, n_points)
        self.d_model, self.n_levels = config.d_model, config.num_feature_levels
        self.n_heads, self.n_points = num_heads, n_points

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None,
                encoder_hidden_states: Optional[Tensor] = None,
                encoder_attention_mask: Optional[Tensor] = None,
                position_embeddings: Optional[Tensor] = None,
                reference_points: Optional[Tensor] = None,
                spatial_shapes: Optional[Tensor] = None, spatial_shapes_list=None,
                level_start_index: Optional[Tensor] = None, **kwargs) -> Tuple[Tensor, Tensor]:
        _check_sequence("hidden_states", hidden_states, "(N, Q, E)", self.embed_dims)
        if encoder_hidden_states is not None:
            _check_sequence("encoder_hidden_states", encoder_hidden_states, "(N, S, E)",
                            self.embed_dims)
        if position_embeddings is not None:
            _check_broadcast("position_embeddings", position_embeddings, "hidden_states",
                             hidden_states.shape)
            hidden_states = hidden_states + position_embeddings
        value = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        names = _HF_NAMES if encoder_hidden_states is not None else \
            ("hidden_states", "hidden_states") + _HF_NAMES[2:]
        self._check_inputs(names, hidden_states, value, reference_points, spatial_shapes,
                           level_start_index, attention_mask, mask_dtype=None)
        drop = None if attention_mask is None else ~attention_mask.bool()
        return self._attend(hidden_states, value, reference_points, spatial_shapes,
                            level_start_index, drop)
