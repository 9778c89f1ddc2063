"""Deformable convolution layers.

- ``DeformConv2d``: offsets (and mask) are given to ``forward``, as in torchvision.
- ``DeformConv2dPack`` (v1) and ``ModulatedDeformConv2dPack`` (v2): the layer predicts its own
  offsets (and mask) from its input with ``conv_offset``, an ordinary convolution of the same
  kernel size, stride, padding and dilation, initialised to zero. Parameter names and channel
  routing are those of mmcv/mmdetection, so their DCN checkpoints load unchanged.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import deform_conv2d
from ..ops.checks import _is_int
from ..ops.deform_conv import _pair
from ._scripting import NotScriptable

_Size = Union[int, Tuple[int, int]]


def _positive_int(name: str, value) -> int:
    """A Python or NumPy integer >= 1, returned as a Python int."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _padding(padding, kernel_size, stride, dilation):
    """``(symmetric padding, extra input padding or None)`` for an int or pair, or 'valid' /
    'same' as in nn.Conv2d. 'same' needs stride 1; when ``dilation*(kernel_size-1)`` is odd the
    padding is asymmetric as in nn.Conv2d (the extra row/column at the bottom/right): the input
    is then padded once with ``F.pad`` (left, right, top, bottom) and convolved with padding 0."""
    if isinstance(padding, str) and padding == "valid":
        return (0, 0), None
    if isinstance(padding, str) and padding == "same":
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
        total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
        if not any(t % 2 for t in total):
            return (total[0] // 2, total[1] // 2), None
        (th, tw) = total
        return (0, 0), (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', "
                         f"got {padding!r}")
    return _pair("padding", padding, 0), None


class _ZeroInitConv2d(nn.Conv2d):
    """The offset predictor: an nn.Conv2d whose initialisation is zero, so every way of
    (re)initialising a layer (``reset_parameters``, meta device then ``to_empty``) starts it on
    the regular grid. Its parameters are ``weight`` and ``bias`` as in nn.Conv2d; its repr says
    ``Conv2d``, the public class it is."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _get_name(self) -> str:
        return "Conv2d"


def _batched(input: Tensor, *others: Optional[Tensor]):
    """Unbatched ``(C, H, W)`` arguments as a batch of one, as nn.Conv2d accepts them."""
    if isinstance(input, Tensor) and input.dim() == 3:
        return True, input[None], [o[None] if isinstance(o, Tensor) else o for o in others]
    return False, input, list(others)


class DeformConv2d(NotScriptable, nn.Module):
    """Deformable convolution with externally given offsets; parameters as ``nn.Conv2d``'s.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias:
            as in ``nn.Conv2d`` (zero padding only).
        device, dtype: factory keywords for the parameters.

    Shape:
        ``forward(input[N, C, H, W], offset[N, 2*G*kH*kW, oH, oW], mask[N, G*kH*kW, oH, oW]
        = None) -> [N, out_channels, oH, oW]``; the offset groups ``G`` follow from ``offset``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Size,
                 stride: _Size = 1, padding: _Size = 0, dilation: _Size = 1, groups: int = 1,
                 bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        in_channels = _positive_int("in_channels", in_channels)
        out_channels = _positive_int("out_channels", out_channels)
        groups = _positive_int("groups", groups)
        if in_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by groups "
                             f"({groups})")
        if out_channels % groups:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by groups "
                             f"({groups})")
        factory = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride = _pair("stride", stride, 1)
        self.dilation = _pair("dilation", dilation, 1)
        # _pad_input: (left, right, top, bottom) for padding='same' with an odd total, else None
        self.padding, self._pad_input = _padding(padding, self.kernel_size, self.stride,
                                                 self.dilation)
        self._padding_arg = padding if isinstance(padding, str) else None
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of ``nn.Conv2d``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def _padded(self, input: Tensor) -> Tensor:
        return input if self._pad_input is None else F.pad(input, self._pad_input)

    def forward(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``input`` (N, C, H, W) or unbatched (C, H, W), then ``offset`` and ``mask`` too."""
        unbatched, input, (offset, mask) = _batched(input, offset, mask)
        out = deform_conv2d(self._padded(input), offset, self.weight, self.bias, self.stride,
                            self.padding, self.dilation, mask)
        return out[0] if unbatched else out

    def extra_repr(self) -> str:
        padding = repr(self._padding_arg) if self._pad_input is not None else self.padding
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={padding}, dilation={self.dilation}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class _Convertible:
    """Mixin (before the module base) for the Pack layers of every dimensionality: what a layer
    made from a plain convolution (:func:`_copy_conv`) does on loading, and v2's ``mask_gain``.

    - A plain convolution's state dict (``weight``/``bias`` only) loads into a converted layer:
      ``conv_offset`` (and ``mask_gain``) are not missing, they restart (zero, gain kept).
    - v2: a state dict with ``mask_gain`` sets it; one with ``conv_offset`` but no
      ``mask_gain`` (an mmcv checkpoint) removes it, so the mask is mmcv's ``sigmoid``.
    """

    _mask = False
    _converted = False  # set on an instance by _copy_conv

    def init_offset(self) -> None:
        """Zero the offset predictor: the layer starts on the regular grid."""
        self.conv_offset.reset_parameters()

    def _watch_loading(self) -> None:
        self.register_load_state_dict_post_hook(_Convertible._after_load)

    def set_mask_gain(self, gain: Optional[float]) -> None:
        """Multiply the mask by ``gain`` (a persistent buffer); None removes it (mmcv's mask)."""
        if gain is None:
            self._buffers.pop("mask_gain", None)
        else:
            self.register_buffer("mask_gain", torch.tensor(
                float(gain), dtype=self.weight.dtype, device=self.weight.device))

    def _gained(self, mask: Tensor) -> Tensor:
        gain = self._buffers.get("mask_gain")
        return mask if gain is None else mask * gain

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        own = [prefix + "conv_offset." + n for n in ("weight", "bias")]
        if self._mask and prefix + "mask_gain" in state_dict:
            self.set_mask_gain(float(state_dict[prefix + "mask_gain"]))
        elif self._mask and own[0] in state_dict:
            self.set_mask_gain(None)  # a trained mmcv layer: mmcv's mask
        if (self._converted and prefix + "weight" in state_dict
                and not any(k in state_dict for k in own)):
            # A plain convolution's state dict into a converted layer: see _after_load.
            self._plain_conv_prefix = prefix
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @staticmethod
    def _after_load(module: "_Convertible", incompatible_keys) -> None:
        """After a plain convolution's state dict was loaded into a converted layer (children
        included): its offset predictor (and ``mask_gain``) are not missing, they restart."""
        prefix = module.__dict__.pop("_plain_conv_prefix", None)
        if prefix is None:
            return
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if not (k.startswith(prefix + "conv_offset.")
                                                 or k == prefix + "mask_gain")]
        module.init_offset()


def _copy_conv(new: _Convertible, conv: nn.Module, preserve_output: bool) -> _Convertible:
    """Make ``new`` (a freshly built Pack layer of ``conv``'s shape) the converted ``conv``:
    weight and bias copied unchanged, ``requires_grad`` and training mode as ``conv``'s (a
    fully frozen ``conv`` gets a frozen ``conv_offset``); v2 with
    ``preserve_output`` gets ``mask_gain = 2`` (mask ``2 * sigmoid(0) = 1`` exactly)."""
    new._converted = True
    if new._mask and preserve_output:
        new.set_mask_gain(2.0)
    with torch.no_grad():
        new.weight.copy_(conv.weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    new.weight.requires_grad_(conv.weight.requires_grad)
    if conv.bias is not None:
        new.bias.requires_grad_(conv.bias.requires_grad)
    if not any(p.requires_grad for p in conv.parameters()):  # frozen: the predictor too
        new.conv_offset.requires_grad_(False)
    return new.train(conv.training)


class DeformConv2dPack(_Convertible, DeformConv2d):
    """Deformable convolution v1 that predicts its own offsets (Dai et al. 2017).

    ``conv_offset`` maps the input to ``2*offset_groups*kH*kW`` offset channels with the same
    kernel size, stride, padding and dilation. It starts at zero, so a new layer samples the
    regular grid and equals ``nn.Conv2d`` with the same weight and bias.

    The positional order is mmcv's: ``(in_channels, out_channels, kernel_size, stride, padding,
    dilation, groups, deform_groups, bias, im2col_step)``, so mmcv/mmdetection calls carry over.

    Args:
        offset_groups: channel groups that share one set of offsets; must divide
            ``in_channels``. mmcv calls it ``deform_groups``; both keywords are accepted (give
            one).
        im2col_step: mmcv's memory knob (images per column buffer). Accepted for
            compatibility and ignored: the kernels here bound their memory themselves.
        The others as ``nn.Conv2d``. Note mmcv's v1 layer defaults to ``bias=False`` and
        ours, like ``nn.Conv2d``, to ``bias=True``: pass it explicitly when porting.

    Loading state dicts (see ``_load_from_state_dict``): an old mmdetection checkpoint that
    stores the predictor as the sibling ``<name>_offset.weight/bias`` (and carries no version
    metadata for the layer) is renamed to ``<name>.conv_offset.*`` on load, as mmcv does. A
    layer made by :func:`~deformconv.convert_to_deformable` also loads the plain convolution's
    state dict (``weight``, ``bias`` only): its offset predictor is then reset to zero, so it
    computes that convolution.
    """

    _mask = False
    # 2: conv_offset inside the layer (mmcv's version too). No version: maybe the old layout.
    _version = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Size,
                 stride: _Size = 1, padding: _Size = 0, dilation: _Size = 1, groups: int = 1,
                 offset_groups: Optional[int] = None, bias: bool = True,
                 im2col_step: Optional[int] = None, *, deform_groups: Optional[int] = None,
                 device=None, dtype=None) -> None:
        if deform_groups is not None and offset_groups is not None \
                and offset_groups != deform_groups:
            raise ValueError(f"offset_groups ({offset_groups}) and its mmcv alias "
                             f"deform_groups ({deform_groups}) disagree; give only one")
        offset_groups = next((g for g in (offset_groups, deform_groups) if g is not None), 1)
        if im2col_step is not None:
            _positive_int("im2col_step", im2col_step)  # checked, then ignored
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, device=device, dtype=dtype)
        if not _is_int(offset_groups) or offset_groups < 1 or in_channels % offset_groups:
            raise ValueError(f"offset_groups must be >= 1 and divide in_channels "
                             f"({in_channels}), got {offset_groups!r}")
        self.offset_groups = int(offset_groups)
        per_group = (3 if self._mask else 2) * self.kernel_size[0] * self.kernel_size[1]
        # Zero-initialised (in its own reset_parameters too): a new layer samples the grid.
        self.conv_offset = _ZeroInitConv2d(in_channels, self.offset_groups * per_group,
                                           self.kernel_size, self.stride, self.padding,
                                           self.dilation, bias=True, device=device, dtype=dtype)
        self._watch_loading()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialisation for the weight and bias, zero for ``conv_offset``."""
        super().reset_parameters()
        if "conv_offset" in self._modules:  # not yet built while the base class initialises
            self.init_offset()

    def offset_and_mask(self, input: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """The offsets (and, for v2, the mask after its sigmoid) this layer uses on ``input``
        (N, C, H, W) or unbatched (C, H, W)."""
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (3, 4) or input.shape[-3] != self.in_channels:
            raise ValueError(f"input must have shape (N, {self.in_channels}, H, W) or "
                             f"({self.in_channels}, H, W), got {tuple(input.shape)}")
        unbatched, x, _ = _batched(input)
        offset, mask = self._split(self.conv_offset(self._padded(x)))
        if unbatched:
            return offset[0], (None if mask is None else mask[0])
        return offset, mask

    def _split(self, out: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        return out, None

    def forward(self, input: Tensor) -> Tensor:  # type: ignore[override]
        """``input`` (N, C, H, W) or unbatched (C, H, W)."""
        offset, mask = self.offset_and_mask(input)
        unbatched, input, (offset, mask) = _batched(input, offset, mask)
        out = deform_conv2d(self._padded(input), offset, self.weight, self.bias, self.stride,
                            self.padding, self.dilation, mask)
        return out[0] if unbatched else out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
        _rename_old_offset_keys(state_dict, prefix, local_metadata.get("version"))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", offset_groups={self.offset_groups}" if self.offset_groups != 1 else "")


class ModulatedDeformConv2dPack(DeformConv2dPack):
    """Deformable convolution v2 that predicts its own offsets and mask (Zhu et al. 2018).

    ``conv_offset`` has ``3*offset_groups*kH*kW`` output channels: the first
    ``2*offset_groups*kH*kW`` are the offsets (interleaved, dy first), the last
    ``offset_groups*kH*kW`` are mask logits passed through a sigmoid, as in mmcv's
    ``ModulatedDeformConv2dPack``. With ``conv_offset`` at zero the mask is ``sigmoid(0) = 0.5``
    everywhere, so a new layer computes ``0.5 * conv2d(input, weight) + bias``: the mmcv
    convention, kept so that mmcv checkpoints and training recipes transfer unchanged.

    A layer made by :func:`~deformconv.convert_to_deformable` (``preserve_output=True``) has
    one more buffer, ``mask_gain`` = 2: its mask is ``2 * sigmoid(logits)``, which is exactly
    1 at the start, so it computes the original convolution with the original, unscaled
    ``weight``; plain pretrained weights loaded into it later keep their meaning. The buffer
    travels in the state dict; a state dict with ``conv_offset`` but without ``mask_gain`` (an
    mmcv checkpoint) switches the layer to mmcv's mask, ``sigmoid(logits)``.
    """

    _mask = True

    def _split(self, out: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        n_off = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        return out[:, :n_off], self._gained(torch.sigmoid(out[:, n_off:]))


def _rename_old_offset_keys(state_dict, prefix: str, version) -> None:
    """mmdetection v1 stored a layer's offset predictor as its sibling ``<name>_offset``:
    rename ``<name>_offset.weight/bias`` to ``<name>.conv_offset.*`` in ``state_dict`` when the
    layer has no version metadata (or one below 2) and no ``conv_offset`` keys, as mmcv does."""
    if not prefix or (version is not None and version >= 2):
        return
    for name in ("weight", "bias"):
        old, new = prefix[:-1] + "_offset." + name, prefix + "conv_offset." + name
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)


def _rename_in_parent(child: str, state_dict, prefix, local_metadata, *args) -> None:
    """A load-state-dict pre-hook on the parent of a ``*Pack`` layer named ``child``.

    ``nn.Module.load_state_dict`` gives each module only the keys under its own prefix, so the
    sibling keys ``<child>_offset.*`` of an old checkpoint reach the parent only; the parent
    renames them before it checks for unexpected keys and hands the rest to its children.
    """
    meta = getattr(state_dict, "_metadata", None)
    version = None if meta is None else meta.get(prefix + child, {}).get("version")
    _rename_old_offset_keys(state_dict, prefix + child + ".", version)


def _on_module_registration(module: nn.Module, name: str, submodule):
    """Global hook: when a ``*Pack`` layer becomes a child, its parent learns to rename the old
    checkpoint layout (see ``_rename_in_parent``)."""
    if isinstance(submodule, DeformConv2dPack):
        hooks = [getattr(h, "hook", h) for h in module._load_state_dict_pre_hooks.values()]
        if not any(isinstance(h, partial) and h.func is _rename_in_parent and h.args == (name,)
                   for h in hooks):
            module._register_load_state_dict_pre_hook(partial(_rename_in_parent, name))
    return None


nn.modules.module.register_module_module_registration_hook(_on_module_registration)
