"""ONNX export of ``deform_conv1d/2d/3d`` to the standard ``DeformConv`` node (opset 19; 22
for bfloat16), one route for every dimensionality.

- ``torch.onnx.export(..., dynamo=True)`` on torch >= 2.8: the public functions emit the node
  themselves through ``torch.onnx.ops.symbolic`` (:func:`deform_conv_symbolic`). 2-D and 3-D
  are the node itself (its layouts are ours: offsets interleaved per tap in the spatial
  dimensions' order, mask ``(N, G*K, *o)``; no runtime implements 3-D today, onnxruntime's
  kernel is 2-D only); 1-D is a 2-D node of unit height (a zero ``dy`` interleaved before each
  ``dx``), exact because the upper corner of a height-1 input weighs 0.
- Programs that call the registered op without the public function (a saved and reloaded
  ``torch.export`` program), and every export below the opset: ``import deformconv`` wraps the
  dynamo exporter's private entry point (``torch.onnx._internal.exporter._compat
  .export_compat``, wrapped when torch imports it, so onnxscript is not imported before an
  export) to add this module's translations to the export's ``custom_translation_table`` (a
  table the user passes is kept; an entry of theirs wins) and to record the opset. The 2-D op
  is translated to the node; every dimensionality gets the one opset check
  (:func:`_check_opset`, a ``ValueError`` naming the opset needed). On torch without the
  wrapper pass ``custom_translation_table=custom_translation_table()``.
- The TorchScript exporter (``dynamo=False``): symbolics for ``deformconv::deform_conv{1,2,3}d``
  are registered at opset 19 when this module is imported (``import deformconv`` does it).

The ONNX operator has our numerics (mask not passed through a sigmoid, zero outside the input),
so no layout conversion is needed. Only ``torch`` is imported here; onnxscript is imported
inside the function that needs it.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.abc
import importlib.util
import inspect
import sys
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.onnx
from torch import Tensor

from .. import geometry

OPSET = 19  # DeformConv-19: float16, float32, float64
OPSET_BFLOAT16 = 22  # DeformConv-22 adds bfloat16

# The opset the running dynamo export writes, set by the wrapper (None: no wrapped export).
_export_opset: contextvars.ContextVar = contextvars.ContextVar("deformconv_onnx_opset",
                                                               default=None)


def exporting_with_symbolic(input: Tensor) -> bool:
    """True inside ``torch.onnx.export(..., dynamo=True)`` on torch >= 2.8 (which has
    ``torch.onnx.ops.symbolic``) when the export's opset has ``DeformConv`` for the input's
    dtype: the public functions then emit the node themselves (:func:`deform_conv_symbolic`).

    False under the TorchScript exporter (it traces the registered op, whose symbolic is
    registered below), below the opset (the op stays one node and its translation raises the
    opset error) and whenever no ONNX export runs.
    """
    if not (torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()
            and hasattr(torch.onnx, "ops") and hasattr(torch.onnx.ops, "symbolic")):
        return False
    return _opset_ok(input.dtype == torch.bfloat16)


def _opset_ok(bf16: bool) -> bool:
    """Whether the running export's opset has DeformConv (for this dtype)."""
    opset = _export_opset.get()
    return opset is None or opset >= (OPSET_BFLOAT16 if bf16 else OPSET)


def _check_opset(bf16: bool) -> None:
    """The one opset check of every route: a ValueError naming the opset needed."""
    need = OPSET_BFLOAT16 if bf16 else OPSET
    if not _opset_ok(bf16):
        raise ValueError(
            f"ONNX DeformConv needs opset {need} or newer{' for bfloat16' if bf16 else ''} "
            f"(onnxruntime rejects it below); this export was asked for "
            f"opset_version={_export_opset.get()}: pass opset_version={need} or higher to "
            f"torch.onnx.export")


def _attributes(C: int, Cg: int, kernel: Sequence[int], G: int, stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int]) -> Dict[str, object]:
    """The node's attributes (a 1-D call is given as 2-D with a unit first dimension)."""
    return {"dilations": list(dilation), "group": C // Cg, "kernel_shape": list(kernel),
            "offset_group": G, "pads": list(padding) * 2, "strides": list(stride)}


def _as_2d(stride, padding, dilation, kernel):
    return [1, *stride], [0, *padding], [1, *dilation], [1, *kernel]


def deform_conv_symbolic(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor],
                         bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
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


def _translation(input, weight, offset, mask, bias, stride_h: int, stride_w: int, pad_h: int,
                 pad_w: int, dil_h: int, dil_w: int):
    """onnxscript translation of ``deformconv::deform_conv2d`` to ``DeformConv``."""
    opset = _export_opset.get()
    _check_opset(str(getattr(input, "dtype", "")).upper().endswith("BFLOAT16"))
    try:
        if opset is not None and opset >= OPSET_BFLOAT16:
            from onnxscript import opset22 as op
        else:
            from onnxscript import opset19 as op
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("ONNX export needs onnxscript: pip install 'deformconv[onnx]'") from e
    C = input.shape[1]
    _, Cg, kH, kW = weight.shape
    G = geometry.offset_groups(offset.shape[1], (kH, kW))
    attrs = _attributes(C, Cg, (kH, kW), G, (stride_h, stride_w), (pad_h, pad_w),
                        (dil_h, dil_w))
    return op.DeformConv(input, weight, offset, bias, mask, **attrs)


def _untranslatable(input, *args, **kwargs):
    """Translation of a 1-D/3-D node that reached the ONNX translation step: only an opset
    without DeformConv gets here (otherwise the public function emitted the node)."""
    _check_opset(str(getattr(input, "dtype", "")).upper().endswith("BFLOAT16"))
    raise ValueError("deform_conv1d/3d: the dynamo ONNX export needs torch >= 2.8 "
                     "(torch.onnx.ops.symbolic)")


def custom_translation_table() -> Dict[Callable, Callable]:
    """``{deformconv::deform_conv2d: onnxscript translation}`` for ``torch.onnx.export``'s
    ``custom_translation_table``. Not needed while ``import deformconv``'s wrapper is installed
    (see the module docstring); kept for explicit use. Requires onnxscript
    (``pip install deformconv[onnx]``) at export time.
    """
    return {torch.ops.deformconv.deform_conv2d.default: _translation}


_COMPAT = "torch.onnx._internal.exporter._compat"


def _wrap_export_compat(module) -> None:
    """Wrap ``module.export_compat`` (the dynamo exporter's entry point) once: add our
    translation to the export's table and remember the opset it writes."""
    inner = getattr(module, "export_compat", None)
    if inner is None or getattr(inner, "_deformconv_wrapped", False):
        return
    try:
        default = inspect.signature(inner).parameters["opset_version"].default
    except (TypeError, ValueError, KeyError):  # pragma: no cover - a changed private API
        return

    @functools.wraps(inner)
    def export_compat(*args, **kwargs):
        opset = kwargs.get("opset_version", default)
        if opset is None:  # torch 2.5-2.7 write their registry's opset, 18
            opset = default if default is not None else _torchlib_opset()
        table = {torch.ops.deformconv.deform_conv2d.default: _translation,
                 torch.ops.deformconv.deform_conv1d.default: _untranslatable,
                 torch.ops.deformconv.deform_conv3d.default: _untranslatable,
                 **(kwargs.get("custom_translation_table") or {})}
        kwargs["custom_translation_table"] = table
        token = _export_opset.set(opset)
        try:
            return inner(*args, **kwargs)
        finally:
            _export_opset.reset(token)

    export_compat._deformconv_wrapped = True
    module.export_compat = export_compat


def _torchlib_opset() -> int:
    try:
        from torch.onnx._internal.exporter import _constants
        return int(_constants.TORCHLIB_OPSET)
    except (ImportError, AttributeError):  # pragma: no cover
        return 18


class _WrapAfterExec(importlib.abc.Loader):
    """Runs the real loader, then wraps the exporter's entry point."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        _wrap_export_compat(module)


class _ExporterImportHook(importlib.abc.MetaPathFinder):
    """Finds the dynamo exporter's module with the other finders and wraps its loader."""

    _busy = False

    def find_spec(self, name, path, target=None):
        if name != _COMPAT or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _WrapAfterExec(spec.loader)
        return spec


def install_dynamo_translation() -> None:
    """Make every dynamo ONNX export translate ``deformconv::deform_conv2d`` (see the module
    docstring): wrap the exporter now if torch has loaded it, else when it does."""
    if _COMPAT in sys.modules:
        _wrap_export_compat(sys.modules[_COMPAT])
    elif not any(isinstance(f, _ExporterImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _ExporterImportHook())


def _torchscript_symbolic(R: int):
    def symbolic(g, input, weight, offset, mask, bias, *flat):
        from torch.onnx import symbolic_helper as sym

        if R == 2:  # six ints: stride_h, stride_w, pad_h, pad_w, dil_h, dil_w
            ints = [int(sym._get_const(v, "i", "stride/padding/dilation")) for v in flat]
            stride, padding, dilation = ints[0:2], ints[2:4], ints[4:6]
        else:
            params = [sym._get_const(v, "is", name) for v, name in
                      zip(flat, ("stride", "padding", "dilation"))]
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
        y = g.op("DeformConv", *inputs, **{k + "_i": v for k, v in a.items()})
        if R == 1:
            y = g.op("Squeeze", y, g.op("Constant", value_t=torch.tensor([2])))
        return y

    return symbolic


def register_torchscript_symbolic() -> None:
    """Register the TorchScript exporter's symbolics for ``deformconv::deform_conv{1,2,3}d``
    (opset 19)."""
    for R in (1, 2, 3):
        torch.onnx.register_custom_op_symbolic(f"deformconv::deform_conv{R}d",
                                               _torchscript_symbolic(R), OPSET)


install_dynamo_translation()
