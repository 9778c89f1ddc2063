"""ONNX export of ``deform_conv1d`` and ``deform_conv3d`` to the standard ``DeformConv`` node.

- 3-D: the N-D ``DeformConv`` node itself (opset 19; 22 for bfloat16). Its layouts are ours
  (offsets interleaved per tap in the spatial dimensions' order, mask ``(N, G*K, *o)``); the
  ONNX checker and shape inference accept it, but no runtime implements 3-D today
  (onnxruntime's kernel is 2-D only).
- 1-D: a 2-D ``DeformConv`` with a unit height, which onnxruntime runs: the input, weight and
  mask get a unit dimension, the offsets get a zero ``dy`` interleaved before each ``dx``, and
  the output's unit dimension is removed. A sample at height 0 of a height-1 input is exact
  (its upper corner lies outside and weighs 0), so the numbers are the 1-D op's.

Two routes, as for the 2-D op (``onnx.py``): ``torch.onnx.export(..., dynamo=True)`` on
torch >= 2.8, where the public functions emit the nodes through ``torch.onnx.ops.symbolic``
(:func:`deform_conv_nd_symbolic`), and the TorchScript exporter, whose symbolics
:func:`register_torchscript_symbolic` registers.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from .. import geometry
from .onnx import EXTRA_TRANSLATIONS, OPSET, OPSET_BFLOAT16, export_opset

__all__ = ["deform_conv_nd_symbolic", "exporting_with_symbolic",
           "register_torchscript_symbolic"]


def _attributes(C: int, Cg: int, kernel: Sequence[int], G: int, stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int]) -> Dict[str, object]:
    """The node's attributes; a 1-D call is given as 2-D with a unit first dimension."""
    return {"dilations": list(dilation), "group": C // Cg, "kernel_shape": list(kernel),
            "offset_group": G, "pads": list(padding) * 2, "strides": list(stride)}


def _as_2d(stride, padding, dilation, kernel):
    return [1, *stride], [0, *padding], [1, *dilation], [1, *kernel]


def exporting_with_symbolic(input: Tensor) -> bool:
    """True inside ``torch.onnx.export(..., dynamo=True)`` on torch >= 2.8: the 1-D/3-D public
    functions then emit the ``DeformConv`` node themselves (they have no translation-table
    entry), when the opset that ``deformconv.ops.onnx``'s exporter wrapper recorded has it.
    """
    if not (torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()
            and hasattr(torch.onnx, "ops") and hasattr(torch.onnx.ops, "symbolic")):
        return False
    # Below DeformConv's opset the node stays the op's, whose translation raises the error.
    return opset_ok(input.dtype == torch.bfloat16)


def opset_ok(bf16: bool) -> bool:
    """Whether the running export's opset has DeformConv (for this dtype)."""
    opset = export_opset()
    return opset is None or opset >= (OPSET_BFLOAT16 if bf16 else OPSET)


def _check_opset(bf16: bool) -> None:
    need = OPSET_BFLOAT16 if bf16 else OPSET
    if not opset_ok(bf16):
        raise ValueError(
            f"ONNX DeformConv needs opset {need} or newer{' for bfloat16' if bf16 else ''} "
            f"(onnxruntime rejects it below); this export was asked for "
            f"opset_version={export_opset()}: pass opset_version={need} or higher to "
            f"torch.onnx.export")


def _untranslatable(input, *args, **kwargs):
    """Translation of a 1-D/3-D node that reached the ONNX translation step: only an opset
    without DeformConv gets here (otherwise the public function emitted the node)."""
    bf16 = str(getattr(input, "dtype", "")).upper().endswith("BFLOAT16")
    _check_opset(bf16)
    raise ValueError("deform_conv1d/3d: the dynamo ONNX export needs torch >= 2.8 "
                     "(torch.onnx.ops.symbolic)")


def register_dynamo_translations() -> None:
    """Give the wrapped dynamo exporter an entry for the N-D ops (clear opset errors)."""
    for name in ("deform_conv1d", "deform_conv3d"):
        EXTRA_TRANSLATIONS[getattr(torch.ops.deformconv, name).default] = _untranslatable


def deform_conv_nd_symbolic(input: Tensor, weight: Tensor, offset: Tensor,
                            mask: Optional[Tensor], bias: Optional[Tensor],
                            stride: Sequence[int], padding: Sequence[int],
                            dilation: Sequence[int]) -> Tensor:
    """The ``DeformConv`` node as a ``torch.onnx.ops.symbolic`` call (dynamo exporter).

    Arguments as the registered ops (already validated). Returns Tensor[N, O, *o] of the
    input's dtype; batch and spatial sizes may be symbolic.
    """
    R = input.dim() - 2
    N, C = input.shape[:2]
    O, Cg, *kernel = weight.shape
    G = offset.shape[1] // (R * geometry.taps(kernel))
    out = geometry.out_size(input.shape[2:], kernel, stride, padding, dilation)
    if R == 1:  # a 2-D node of unit height
        input, weight = input.unsqueeze(2), weight.unsqueeze(2)
        offset = torch.stack([torch.zeros_like(offset), offset], dim=2).flatten(1, 2)
        offset = offset.unsqueeze(2)
        mask = mask.unsqueeze(2) if mask is not None else None
        stride, padding, dilation, kernel = _as_2d(stride, padding, dilation, kernel)
    version = OPSET_BFLOAT16 if input.dtype == torch.bfloat16 else OPSET
    y = torch.onnx.ops.symbolic(
        "DeformConv", [input, weight, offset, bias, mask],
        _attributes(int(C), int(Cg), [int(k) for k in kernel], int(G), stride, padding,
                    dilation),
        dtype=input.dtype, shape=(N, O, *([1] if R == 1 else []), *out), version=version)
    return y.squeeze(2) if R == 1 else y


def _torchscript_symbolic(R: int):
    def symbolic(g, input, weight, offset, mask, bias, stride, padding, dilation):
        from torch.onnx import symbolic_helper as sym

        params = [sym._get_const(v, "is", name) for v, name in
                  ((stride, "stride"), (padding, "padding"), (dilation, "dilation"))]
        stride, padding, dilation = ([int(i) for i in p] for p in params)
        _, Cg, *kernel = sym._get_tensor_sizes(weight)
        C = sym._get_tensor_dim_size(input, 1)
        G = sym._get_tensor_dim_size(offset, 1) // (R * geometry.taps(kernel))
        if R == 1:
            axis = g.op("Constant", value_t=torch.tensor([2]))
            input, weight = (g.op("Unsqueeze", t, axis) for t in (input, weight))
            # (N, G*kW, oW) -> (N, G*kW, 2, oW) with dy = 0 -> (N, 2*G*kW, 1, oW)
            zero = g.op("Mul", offset, g.op("Constant", value_t=torch.tensor(0.0)))
            pairs = g.op("Concat", g.op("Unsqueeze", zero, axis),
                         g.op("Unsqueeze", offset, axis), axis_i=2)
            shape = g.op("Shape", offset)
            head = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([0])),
                        g.op("Constant", value_t=torch.tensor([1])))
            tail = g.op("Constant", value_t=torch.tensor([2 * G * kernel[0], 1, -1]))
            offset = g.op("Reshape", pairs, g.op("Concat", head, tail, axis_i=0))
            if not sym._is_none(mask):
                mask = g.op("Unsqueeze", mask, axis)
            stride, padding, dilation, kernel = _as_2d(stride, padding, dilation, kernel)
        inputs = [input, weight, offset]
        if not sym._is_none(mask):
            if sym._is_none(bias):
                bias = g.op("prim::Constant")
                bias.setType(torch._C.OptionalType.ofTensor())
            inputs += [bias, mask]
        elif not sym._is_none(bias):
            inputs.append(bias)
        a = _attributes(C, Cg, kernel, G, stride, padding, dilation)
        y = g.op("DeformConv", *inputs, dilations_i=a["dilations"], group_i=a["group"],
                 kernel_shape_i=a["kernel_shape"], offset_group_i=a["offset_group"],
                 pads_i=a["pads"], strides_i=a["strides"])
        if R == 1:
            y = g.op("Squeeze", y, g.op("Constant", value_t=torch.tensor([2])))
        return y

    return symbolic


def register_torchscript_symbolic() -> None:
    """Register the TorchScript exporter's symbolics for ``deformconv::deform_conv1d``/``3d``
    (opset 19)."""
    for R in (1, 3):
        torch.onnx.register_custom_op_symbolic(f"deformconv::deform_conv{R}d",
                                               _torchscript_symbolic(R), OPSET)

