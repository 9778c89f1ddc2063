"""Deformable convolution layers of 1, 2 and 3 spatial dimensions, on one base.

- ``DeformConv{R}d``: offsets (and mask) are given to ``forward``, as in torchvision.
- ``DeformConv{R}dPack`` (v1) and ``ModulatedDeformConv{R}dPack`` (v2): the layer predicts its
  own offsets (and mask) from its input with ``conv_offset``, an ordinary convolution of the
  same kernel size, stride, padding and dilation, initialised to zero. Parameter names, channel
  routing and the positional order are mmcv/mmdetection's, so their DCN checkpoints and calls
  carry over.

Every layer accepts what ``nn.Conv{R}d`` accepts: unbatched input, ``padding='valid'`` and
``'same'`` (with stride 1; an odd total padding is split as ``nn.Conv{R}d`` splits it, the
extra sample at the end), Python or NumPy integers. :class:`_DeformConvNd` and
:class:`_PackNd` hold everything; a concrete class only names its dimensionality ``_ndim``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import deform_conv1d, deform_conv2d, deform_conv3d
from ..ops.checks import _COUNT_WORDS, _is_int, int_tuple
from ._scripting import NotScriptable

_Size = Union[int, Tuple[int, ...]]
_FUNCTIONS = {1: deform_conv1d, 2: deform_conv2d, 3: deform_conv3d}
_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _positive_int(name: str, value) -> int:
    """A Python or NumPy integer >= 1, returned as a Python int."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _padding(padding, kernel_size, stride, dilation, R: int):
    """``(symmetric padding, extra input padding or None)`` for an int or R-tuple, or 'valid' /
    'same' as in nn.Conv{R}d. 'same' needs stride 1; when some ``dilation*(kernel_size-1)`` is
    odd the padding is asymmetric as in nn.Conv{R}d (the extra sample at the end): the input is
    then padded once with ``F.pad`` and convolved with padding 0."""
    if isinstance(padding, str) and padding == "valid":
        return (0,) * R, None
    if isinstance(padding, str) and padding == "same":
        if set(stride) != {1}:
            raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
        total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
        if not any(t % 2 for t in total):
            return tuple(t // 2 for t in total), None
        # F.pad lists the last dimension first
        return (0,) * R, tuple(p for t in reversed(total) for p in (t // 2, t - t // 2))
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int, {_COUNT_WORDS[R]}, 'valid' or 'same', "
                         f"got {padding!r}")
    return int_tuple("padding", padding, R, 0), None


class _ZeroInit:
    """Mixin for the offset predictor: zero initialisation in ``reset_parameters``, so every
    way of (re)initialising a layer (``reset_parameters``, meta device then ``to_empty``) starts
    it on the regular grid. Its repr says ``Conv{R}d``, the public class it is."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _get_name(self) -> str:
        return type(self).__mro__[2].__name__


class _ZeroInitConv1d(_ZeroInit, nn.Conv1d):
    pass


class _ZeroInitConv2d(_ZeroInit, nn.Conv2d):
    pass


class _ZeroInitConv3d(_ZeroInit, nn.Conv3d):
    pass


_OFFSET_CONVS = {1: _ZeroInitConv1d, 2: _ZeroInitConv2d, 3: _ZeroInitConv3d}


def _batched(R: int, input, others):
    """Unbatched ``(C, *S)`` arguments as a batch of one, as nn.Conv{R}d accepts them:
    ``(unbatched, input, others)``. With an unbatched input every other tensor must be
    unbatched too (the error shows it as given)."""
    if not (isinstance(input, Tensor) and input.dim() == R + 1):
        return False, input, others
    out = []
    for name, t in others:
        if isinstance(t, Tensor):
            if t.dim() != R + 1:
                raise ValueError(f"{name} must be {R + 1}-D like the unbatched input "
                                 f"{tuple(input.shape)}, got shape {tuple(t.shape)}")
            t = t[None]
        out.append((name, t))
    return True, input[None], out


class _DeformConvNd(NotScriptable, nn.Module):
    """Deformable convolution of ``_ndim`` spatial dimensions with given offsets; parameters,
    initialisation and constructor as ``nn.Conv{R}d`` (zero padding only)."""

    _ndim = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Size,
                 stride: _Size = 1, padding: Union[_Size, str] = 0, dilation: _Size = 1,
                 groups: int = 1, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        R = self._ndim
        in_channels = _positive_int("in_channels", in_channels)
        out_channels = _positive_int("out_channels", out_channels)
        groups = _positive_int("groups", groups)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value % groups:
                raise ValueError(f"{name} ({value}) must be divisible by groups ({groups})")
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {bias!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = int_tuple("kernel_size", kernel_size, R, 1)
        self.stride = int_tuple("stride", stride, R, 1)
        self.dilation = int_tuple("dilation", dilation, R, 1)
        # _pad_input: F.pad's tuple for padding='same' with an odd total, else None
        self.padding, self._pad_input = _padding(padding, self.kernel_size, self.stride,
                                                 self.dilation, R)
        self._padding_arg = padding if isinstance(padding, str) else None
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of ``nn.Conv{R}d``: its own code, so the same random draws."""
        nn.modules.conv._ConvNd.reset_parameters(self)

    def _padded(self, input: Tensor) -> Tensor:
        return input if self._pad_input is None else F.pad(input, self._pad_input)

    def forward(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``input`` (N, C, *S) or unbatched (C, *S), then ``offset`` and ``mask`` too."""
        unbatched, input, [(_, offset), (_, mask)] = _batched(
            self._ndim, input, [("offset", offset), ("mask", mask)])
        out = _FUNCTIONS[self._ndim](self._padded(input), offset, self.weight, self.bias,
                                     self.stride, self.padding, self.dilation, mask)
        return out[0] if unbatched else out

    def extra_repr(self) -> str:
        padding = repr(self._padding_arg) if self._padding_arg is not None else self.padding
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={padding}, dilation={self.dilation}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + (", bias=False" if self.bias is None else "")


class DeformConv1d(_DeformConvNd):
    """1-D deformable convolution with given offsets; arguments as ``nn.Conv1d``.

    Shape:
        ``forward(input[N, C, W], offset[N, G*kW, oW], mask[N, G*kW, oW] = None)
        -> [N, out_channels, oW]``; the offset groups ``G`` follow from ``offset``. Unbatched
        ``(C, W)`` input takes unbatched offsets and mask.
    """

    _ndim = 1


class DeformConv2d(_DeformConvNd):
    """Deformable convolution with given offsets; arguments as ``nn.Conv2d``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias:
            as in ``nn.Conv2d`` (zero padding only).
        device, dtype: factory keywords for the parameters.

    Shape:
        ``forward(input[N, C, H, W], offset[N, 2*G*kH*kW, oH, oW], mask[N, G*kH*kW, oH, oW]
        = None) -> [N, out_channels, oH, oW]``; the offset groups ``G`` follow from ``offset``.
        Unbatched ``(C, H, W)`` input takes unbatched offsets and mask.
    """

    _ndim = 2


class DeformConv3d(_DeformConvNd):
    """3-D deformable convolution with given offsets; arguments as ``nn.Conv3d``.

    Shape:
        ``forward(input[N, C, D, H, W], offset[N, 3*G*K, oD, oH, oW],
        mask[N, G*K, oD, oH, oW] = None) -> [N, out_channels, oD, oH, oW]`` with
        ``K = kD*kH*kW``; offsets interleaved per tap, depth first. Unbatched input takes
        unbatched offsets and mask.
    """

    _ndim = 3


class _PackNd:
    """Mixin (first base) for the layers that predict their own offsets (and mask).

    ``conv_offset`` maps the input to ``R*G*K`` offset channels (v1), or ``(R+1)*G*K`` (v2:
    offsets, then mask logits through a sigmoid), with the layer's kernel size, stride,
    padding and dilation; it starts at zero, so a new layer samples the regular grid.

    The positional order is mmcv's for every dimensionality: ``(in_channels, out_channels,
    kernel_size, stride, padding, dilation, groups, offset_groups, bias, im2col_step)``.

    Args:
        offset_groups: channel groups that share one set of offsets; must divide
            ``in_channels`` (default 1). mmcv calls it ``deform_groups``; both keywords are
            accepted (give one, or the same value twice).
        bias: a bool, as in ``nn.Conv{R}d``. Note mmcv's v1 layer defaults to ``bias=False``
            and ours to ``bias=True``: pass it explicitly when porting.
        im2col_step: mmcv's memory knob. Accepted for compatibility and ignored: the kernels
            here bound their memory themselves.

    Loading state dicts: an old mmdetection checkpoint that stores the predictor as the
    sibling ``<name>_offset.weight/bias`` (and carries no version metadata for the layer) is
    renamed to ``<name>.conv_offset.*`` on load, as mmcv does. A layer made by
    :meth:`from_conv` (or :func:`~deformconv.convert_to_deformable`) also loads the plain
    convolution's state dict (``weight``, ``bias`` only): its offset predictor (and
    ``mask_gain``) are then not missing, they restart (zero, gain kept), so it computes that
    convolution. v2: a state dict with ``mask_gain`` sets it; one with ``conv_offset`` but no
    ``mask_gain`` (an mmcv checkpoint) removes it, so the mask is mmcv's ``sigmoid``.
    """

    # 2: conv_offset inside the layer (mmcv's version too). No version: maybe the old layout.
    _version = 2
    _mask = False
    _converted = False  # set on an instance by from_conv

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Size,
                 stride: _Size = 1, padding: Union[_Size, str] = 0, dilation: _Size = 1,
                 groups: int = 1, offset_groups: Optional[int] = None, bias: bool = True,
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
        if not _is_int(offset_groups) or offset_groups < 1 or self.in_channels % offset_groups:
            raise ValueError(f"offset_groups must be >= 1 and divide in_channels "
                             f"({self.in_channels}), got {offset_groups!r}")
        self.offset_groups = int(offset_groups)
        R = self._ndim
        per_group = (R + 1 if self._mask else R) * math.prod(self.kernel_size)
        self.conv_offset = _OFFSET_CONVS[R](self.in_channels, self.offset_groups * per_group,
                                            self.kernel_size, self.stride, self.padding,
                                            self.dilation, bias=True, device=device,
                                            dtype=dtype)
        self.register_load_state_dict_post_hook(_PackNd._after_load)

    def init_offset(self) -> None:
        """Zero the offset predictor: the layer starts on the regular grid."""
        self.conv_offset.reset_parameters()

    def set_mask_gain(self, gain: Optional[float]) -> None:
        """Multiply the mask by ``gain`` (a persistent buffer); None removes it (mmcv's mask)."""
        if gain is None:
            self._buffers.pop("mask_gain", None)
        else:
            self.register_buffer("mask_gain", torch.tensor(
                float(gain), dtype=self.weight.dtype, device=self.weight.device))

    def reset_parameters(self) -> None:
        """``nn.Conv{R}d``'s initialisation for the weight and bias, zero for
        ``conv_offset``."""
        super().reset_parameters()
        if "conv_offset" in self._modules:  # not yet built while the base initialises
            self.init_offset()

    def offset_and_mask(self, input: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """The offsets (and, for v2, the mask after its sigmoid) this layer uses on ``input``
        (N, C, *S) or unbatched (C, *S)."""
        R = self._ndim
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (R + 1, R + 2) or input.shape[-R - 1] != self.in_channels:
            dims = ", ".join("DHW"[3 - R:])
            raise ValueError(f"input must have shape (N, {self.in_channels}, {dims}) or "
                             f"({self.in_channels}, {dims}), got {tuple(input.shape)}")
        unbatched, x, _ = _batched(R, input, [])
        offset = self.conv_offset(self._padded(x))
        mask = None
        if self._mask:  # offsets, then mask logits
            n_off = R * self.offset_groups * math.prod(self.kernel_size)
            mask = torch.sigmoid(offset[:, n_off:])
            gain = self._buffers.get("mask_gain")
            if gain is not None:
                mask = mask * gain
            offset = offset[:, :n_off]
        if unbatched:
            return offset[0], (None if mask is None else mask[0])
        return offset, mask

    def forward(self, input: Tensor) -> Tensor:  # type: ignore[override]
        """``input`` (N, C, *S) or unbatched (C, *S)."""
        return super().forward(input, *self.offset_and_mask(input))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
        _rename_old_offset_keys(state_dict, prefix, local_metadata.get("version"))
        own = [prefix + "conv_offset." + n for n in ("weight", "bias")]
        if self._mask and prefix + "mask_gain" in state_dict:
            self.set_mask_gain(float(state_dict[prefix + "mask_gain"]))
        elif self._mask and own[0] in state_dict:
            self.set_mask_gain(None)  # a trained mmcv layer: mmcv's mask
        if (self._converted and prefix + "weight" in state_dict
                and not any(k in state_dict for k in own)):
            # A plain convolution's state dict into a converted layer: see _after_load.
            self._plain_conv_prefix = prefix
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    @staticmethod
    def _after_load(module: "_PackNd", incompatible_keys) -> None:
        """After a plain convolution's state dict was loaded into a converted layer (children
        included): its offset predictor (and ``mask_gain``) are not missing, they restart."""
        prefix = module.__dict__.pop("_plain_conv_prefix", None)
        if prefix is None:
            return
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if not (k.startswith(prefix + "conv_offset.")
                                                 or k == prefix + "mask_gain")]
        module.init_offset()

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", offset_groups={self.offset_groups}" if self.offset_groups != 1 else "")

    @classmethod
    def from_conv(cls, conv: nn.Module, offset_groups: int = 1,
                  preserve_output: bool = True) -> "_PackNd":
        """A layer of this class that starts as the same function as ``conv`` (an
        ``nn.Conv{R}d`` of this dimensionality with zero padding).

        Copies channels, kernel, stride, padding (``'same'``/``'valid'`` included), dilation,
        groups, bias (unchanged), device, dtype, training mode and ``requires_grad``. v2 with
        ``preserve_output`` gets the persistent buffer ``mask_gain = 2``: its mask
        ``2 * sigmoid(0)`` is exactly 1 at the start, and the plain state dict loaded later
        keeps its meaning (see the class); without it the layer starts at mmcv's mask 0.5.
        """
        want = _CONVS[cls._ndim]
        if not isinstance(conv, want):
            raise TypeError(f"conv must be an nn.{want.__name__}, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"conv must have zero padding, got padding_mode="
                             f"{conv.padding_mode!r}")
        w = conv.weight
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  conv.padding, conv.dilation, conv.groups, offset_groups,
                  conv.bias is not None, device=w.device, dtype=w.dtype)
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


class DeformConv1dPack(_PackNd, DeformConv1d):
    """1-D deformable convolution v1 predicting its own offsets; arguments as ``nn.Conv1d``
    plus ``offset_groups`` (mmcv's order, see ``_PackNd``).
    ``forward(input[N, C, W]) -> [N, out_channels, oW]``."""


class ModulatedDeformConv1dPack(DeformConv1dPack):
    """1-D deformable convolution v2 predicting its own offsets and mask (``conv_offset``:
    ``G*kW`` offsets, then ``G*kW`` mask logits). A new layer computes
    ``0.5 * conv1d(input, weight) + bias``; one made by ``from_conv`` the convolution itself."""

    _mask = True


class DeformConv2dPack(_PackNd, DeformConv2d):
    """Deformable convolution v1 that predicts its own offsets (Dai et al. 2017).

    ``conv_offset`` maps the input to ``2*offset_groups*kH*kW`` offset channels with the same
    kernel size, stride, padding and dilation. It starts at zero, so a new layer samples the
    regular grid and equals ``nn.Conv2d`` with the same weight and bias. Arguments, loading
    and ``from_conv``: see ``_PackNd``.
    """


class ModulatedDeformConv2dPack(DeformConv2dPack):
    """Deformable convolution v2 that predicts its own offsets and mask (Zhu et al. 2018).

    ``conv_offset`` has ``3*offset_groups*kH*kW`` output channels: the first
    ``2*offset_groups*kH*kW`` are the offsets (interleaved, dy first), the last
    ``offset_groups*kH*kW`` are mask logits passed through a sigmoid, as in mmcv's
    ``ModulatedDeformConv2dPack``. With ``conv_offset`` at zero the mask is ``sigmoid(0) = 0.5``
    everywhere, so a new layer computes ``0.5 * conv2d(input, weight) + bias``: the mmcv
    convention, kept so that mmcv checkpoints and training recipes transfer unchanged.

    A layer made by ``from_conv`` or :func:`~deformconv.convert_to_deformable`
    (``preserve_output=True``) has one more buffer, ``mask_gain`` = 2: its mask is
    ``2 * sigmoid(logits)``, which is exactly 1 at the start, so it computes the original
    convolution with the original, unscaled ``weight``; plain pretrained weights loaded into it
    later keep their meaning. The buffer travels in the state dict; a state dict with
    ``conv_offset`` but without ``mask_gain`` (an mmcv checkpoint) switches the layer to mmcv's
    mask, ``sigmoid(logits)``.
    """

    _mask = True


class DeformConv3dPack(_PackNd, DeformConv3d):
    """3-D deformable convolution v1 predicting its own offsets; arguments as ``nn.Conv3d``
    plus ``offset_groups`` (mmcv's order, see ``_PackNd``).
    ``forward(input[N, C, D, H, W]) -> [N, out_channels, oD, oH, oW]``."""


class ModulatedDeformConv3dPack(DeformConv3dPack):
    """3-D deformable convolution v2 predicting its own offsets and mask (``conv_offset``:
    ``3*G*K`` offsets depth first, then ``G*K`` mask logits). A new layer computes
    ``0.5 * conv3d(input, weight) + bias``; one made by ``from_conv`` the convolution itself."""

    _mask = True


_PACKS = {1: (DeformConv1dPack, ModulatedDeformConv1dPack),
          2: (DeformConv2dPack, ModulatedDeformConv2dPack),
          3: (DeformConv3dPack, ModulatedDeformConv3dPack)}


def deformable_from_conv(conv: nn.Module, version: int = 2, offset_groups: int = 1,
                         preserve_output: bool = True) -> _PackNd:
    """The Pack layer (v1 or v2) of ``conv``'s dimensionality that starts as ``conv``: the
    mapping of ``convert_to_deformable`` for ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d``."""
    R = next((r for r, c in _CONVS.items() if type(conv) is c), None)
    if R is None:
        raise TypeError(f"conv must be an nn.Conv1d, nn.Conv2d or nn.Conv3d, got "
                        f"{type(conv).__name__}")
    return _PACKS[R][version == 2].from_conv(conv, offset_groups, preserve_output)


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
    if isinstance(submodule, _PackNd):
        hooks = [getattr(h, "hook", h) for h in module._load_state_dict_pre_hooks.values()]
        if not any(isinstance(h, partial) and h.func is _rename_in_parent and h.args == (name,)
                   for h in hooks):
            module._register_load_state_dict_pre_hook(partial(_rename_in_parent, name))
    return None


nn.modules.module.register_module_module_registration_hook(_on_module_registration)
