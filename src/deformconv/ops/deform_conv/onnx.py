"""ONNX export: our op becomes the standard ONNX ``DeformConv`` (opset 19, 22 for bfloat16).

Routes, all producing the same node:

- ``torch.onnx.export(..., dynamo=True)`` (a module or an ``ExportedProgram``, also one saved
  and loaded again): ``import deformconv`` installs a wrapper around the dynamo exporter's
  entry point (``torch.onnx._internal.exporter._compat.export_compat``, wrapped when torch
  imports it, so onnxscript is not imported before an export). The wrapper adds the onnxscript
  translation of ``deformconv::deform_conv2d`` to the export's ``custom_translation_table``
  (a table the user passes is kept; an entry of theirs for the op wins) and remembers the
  requested opset; the translation raises a ``ValueError`` naming opset 19 when the model would
  be written at a lower opset (onnxruntime rejects ``DeformConv`` there), and naming opset 22
  for bfloat16. This touches a private torch module: should it move, the wrapper is not
  installed and the fallbacks below apply.
- Fallback without the wrapper: on torch >= 2.8 the public :func:`~deformconv.deform_conv2d`
  emits the node itself through ``torch.onnx.ops.symbolic`` while exporting (see
  :func:`deform_conv2d_symbolic`); on older torch pass
  ``custom_translation_table=custom_translation_table()`` and ``opset_version=19``.
- The TorchScript exporter (``dynamo=False``): a symbolic for ``deformconv::deform_conv2d`` is
  registered at opset 19 when this module is imported (``import deformconv`` does it).

The ONNX operator has the same numerics as ours (offsets interleaved ``dy`` first, mask not
passed through a sigmoid, zero outside the image), so no layout conversion is needed. Only
``torch`` is imported here; onnxscript is imported inside the function that needs it.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.abc
import importlib.util
import inspect
import sys
from typing import Callable, Dict, Optional

import torch
import torch.onnx
from torch import Tensor

from .. import geometry

OPSET = 19  # DeformConv-19: float16, float32, float64
OPSET_BFLOAT16 = 22  # DeformConv-22 adds bfloat16


# Translations other op modules add for the wrapped dynamo exporter (op overload -> function).
EXTRA_TRANSLATIONS: Dict[Callable, Callable] = {}


def export_opset():
    """The opset of the dynamo export running now (recorded by the exporter wrapper), or None."""
    return _export_opset.get()


def exporting_with_symbolic() -> bool:
    """True inside ``torch.onnx.export(..., dynamo=True)`` on a torch that has
    ``torch.onnx.ops.symbolic`` (2.8 and newer), where the public function emits the ONNX node.

    False under the TorchScript exporter (it traces the registered op instead), inside the
    wrapped dynamo exporter (the op stays one node and gets its translation, which checks the
    opset) and whenever no ONNX export runs.
    """
    return (torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()
            and _export_opset.get() is None
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


# The opset the running dynamo export writes, set by the wrapper (None: no wrapped export).
_export_opset: contextvars.ContextVar = contextvars.ContextVar("deformconv_onnx_opset",
                                                               default=None)


def _translation(input, weight, offset, mask, bias, stride_h: int, stride_w: int, pad_h: int,
                 pad_w: int, dil_h: int, dil_w: int):
    """onnxscript translation of ``deformconv::deform_conv2d`` to ``DeformConv``."""
    opset = _export_opset.get()
    bf16 = str(getattr(input, "dtype", "")).upper().endswith("BFLOAT16")
    need = OPSET_BFLOAT16 if bf16 else OPSET
    if opset is not None and opset < need:
        raise ValueError(
            f"ONNX DeformConv needs opset {need} or newer{' for bfloat16' if bf16 else ''} "
            f"(onnxruntime rejects it below); this export was asked for "
            f"opset_version={opset}: pass opset_version={need} or higher to torch.onnx.export")
    try:
        if opset is not None and opset >= OPSET_BFLOAT16:
            from onnxscript import opset22 as op
        else:
            from onnxscript import opset19 as op
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("ONNX export needs onnxscript: pip install 'deformconv[onnx]'") from e
    C = input.shape[1]
    O, Cg, kH, kW = weight.shape
    G = geometry.offset_groups(offset.shape[1], (kH, kW))
    attrs = _attributes(C, O, Cg, kH, kW, G, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
    return op.DeformConv(input, weight, offset, bias, mask, **attrs)


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
        table = {torch.ops.deformconv.deform_conv2d.default: _translation, **EXTRA_TRANSLATIONS}
        table.update(kwargs.get("custom_translation_table") or {})
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



install_dynamo_translation()
