"""Multi-scale deformable attention (Deformable DETR): ``ms_deform_attn`` and its registered
operators ``deformconv::ms_deform_attn`` / ``ms_deform_attn_backward``."""

from .functional import ms_deform_attn
from .library import ms_deform_attn_backward_op, ms_deform_attn_op

__all__ = ["ms_deform_attn", "ms_deform_attn_op", "ms_deform_attn_backward_op"]
