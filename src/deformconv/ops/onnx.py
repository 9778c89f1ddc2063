"""ONNX export: our op becomes the standard ONNX ``DeformConv`` (opset 19, 22 for bfloat16).

Three routes, one per exporter, all producing the same node:

- ``torch.onnx.export(..., dynamo=True)`` on torch >= 2.8: while exporting, the public
  :func:`~deformconv.deform_conv2d` emits the node itself through ``torch.onnx.ops.symbolic``
  (see :func:`deform_conv2d_symbolic`), so a plain export call works, nothing to pass.
- The same exporter on torch 2.5 to 2.7 (no ``torch.onnx.ops``): pass
  ``custom_translation_table=deformconv.ops.onnx.custom_translation_table()``, an onnxscript
  translation of ``deformconv::deform_conv2d``.
- The TorchScript exporter (``dynamo=False``): a symbolic for ``deformconv::deform_conv2d`` is
  registered at opset 19 when this module is imported (``import deformconv`` does it).

The ONNX operator has the same numerics as ours (offsets interleaved ``dy`` first, mask not
passed through a sigmoid, zero outside the image), so no layout conversion is needed. Only
``torch`` is imported here; onnxscript is imported inside the function that needs it.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.onnx
from torch import Tensor

from . import geometry

OPSET = 19  # DeformConv-19: float16, float32, float64
OPSET_BFLOAT16 = 22  # DeformConv-22 adds bfloat16


def exporting_with_symbolic() -> bool:
    """True inside ``torch.onnx.export(..., dynamo=True)`` on a torch that has
    ``torch.onnx.ops.symbolic`` (2.8 and newer), where the public function emits the ONNX node.

    False under the TorchScript exporter (it traces the registered op instead) and whenever no
    ONNX export runs.
    """
    return (torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()
            and hasattr(torch.onnx, "ops") and hasattr(torch.onnx.ops, "symbolic"))


def _attributes(C: int, O: int, Cg: int, kH: int, kW: int, G: int, sh: int, sw: int, ph: int,
                pw: int, dh: int, dw: int) -> Dict[str, object]:
    return {"dilations": [dh, dw], "group": C // Cg, "kernel_shape": [kH, kW],
            "offset_group": G, "pads": [ph, pw, ph, pw], "strides": [sh, sw]}


def deform_conv2d_symbolic(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor],
                           bias: Optional[Tensor], sh: int, sw: int, ph: int, pw: int, dh: int,
                           dw: int) -> Tensor:
    """The ONNX ``DeformConv`` node as a ``torch.onnx.ops.symbolic`` call (dynamo exporter).

    Arguments as the registered op (already validated); batch and spatial sizes may be
    symbolic. Returns the node's output, Tensor[N, O, oH, oW] of the input's dtype.
    """
    N, C, H, W = input.shape
    O, Cg, kH, kW = weight.shape
    G = geometry.offset_groups(offset.shape[1], (kH, kW))
    oH, oW = geometry.out_size((H, W), (kH, kW), (sh, sw), (ph, pw), (dh, dw))
    version = OPSET_BFLOAT16 if input.dtype == torch.bfloat16 else OPSET
    return torch.onnx.ops.symbolic(
        "DeformConv", [input, weight, offset, bias, mask],
        _attributes(int(C), int(O), int(Cg), int(kH), int(kW), int(G), sh, sw, ph, pw, dh, dw),
        dtype=input.dtype, shape=(N, O, oH, oW), version=version)


def custom_translation_table() -> Dict[Callable, Callable]:
    """``{deformconv::deform_conv2d: onnxscript translation}`` for ``torch.onnx.export``'s
    ``custom_translation_table`` (needed on torch 2.5 to 2.7 only; newer torch needs nothing).

    Requires onnxscript (``pip install deformconv[onnx]``).
    """
    try:
        from onnxscript import opset19 as op
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("ONNX export needs onnxscript: pip install 'deformconv[onnx]'") from e

    def deform_conv2d(input, weight, offset, mask, bias, stride_h: int, stride_w: int,
                      pad_h: int, pad_w: int, dil_h: int, dil_w: int):
        C = input.shape[1]
        O, Cg, kH, kW = weight.shape
        G = geometry.offset_groups(offset.shape[1], (kH, kW))
        attrs = _attributes(C, O, Cg, kH, kW, G, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
        return op.DeformConv(input, weight, offset, bias, mask, **attrs)

    return {torch.ops.deformconv.deform_conv2d.default: deform_conv2d}


def _torchscript_symbolic(g, input, weight, offset, mask, bias, sh, sw, ph, pw, dh, dw):
    from torch.onnx import symbolic_helper as sym

    ints = [sym._get_const(v, "i", name) for v, name in
            ((sh, "stride_h"), (sw, "stride_w"), (ph, "pad_h"), (pw, "pad_w"), (dh, "dil_h"),
             (dw, "dil_w"))]
    O, Cg, kH, kW = sym._get_tensor_sizes(weight)
    C = sym._get_tensor_dim_size(input, 1)
    G = geometry.offset_groups(sym._get_tensor_dim_size(offset, 1), (kH, kW))
    attrs = _attributes(C, O, Cg, kH, kW, G, *ints)
    inputs = [input, weight, offset]
    if not sym._is_none(mask):
        inputs += [g.op("prim::Constant") if sym._is_none(bias) else bias, mask]
        if sym._is_none(bias):
            inputs[3].setType(torch._C.OptionalType.ofTensor())
    elif not sym._is_none(bias):
        inputs.append(bias)
    return g.op("DeformConv", *inputs, dilations_i=attrs["dilations"], group_i=attrs["group"],
                kernel_shape_i=attrs["kernel_shape"], offset_group_i=attrs["offset_group"],
                pads_i=attrs["pads"], strides_i=attrs["strides"])


def register_torchscript_symbolic() -> None:
    """Register the TorchScript exporter's symbolic for ``deformconv::deform_conv2d``."""
    torch.onnx.register_custom_op_symbolic("deformconv::deform_conv2d", _torchscript_symbolic,
                                           OPSET)

