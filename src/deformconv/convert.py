"""Swap ordinary convolutions of a model for deformable ones that start as the same function."""

from __future__ import annotations

import copy
import logging
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .nn import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack

logger = logging.getLogger(__name__)

_Filter = Callable[[str, nn.Conv2d], bool]


def _version(version: Union[int, str]) -> int:
    v = {1: 1, 2: 2, "v1": 1, "v2": 2, "1": 1, "2": 2}.get(
        version.lower() if isinstance(version, str) else version)
    if v is None or isinstance(version, bool):
        raise ValueError(f"version must be 1, 2, 'v1' or 'v2', got {version!r}")
    return v


def _why_not(conv: nn.Module) -> Optional[str]:
    """Why ``conv`` cannot be converted, or None when it can."""
    if type(conv) is not nn.Conv2d:
        return f"is a {type(conv).__name__}, not an nn.Conv2d"
    if conv.kernel_size == (1, 1):
        return "has a 1x1 kernel (nothing to deform)"
    if conv.padding_mode != "zeros":
        return f"has padding_mode={conv.padding_mode!r}; deformable layers pad with zeros"
    if isinstance(conv.padding, str):
        return f"has padding={conv.padding!r}; give it explicit integer padding"
    return None


def _eligible(model: nn.Module) -> List[Tuple[str, nn.Conv2d]]:
    """Convertible convolutions in module order, skipping those inside deformable layers."""
    out, inside = [], []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(m, DeformConv2d):
            inside.append(name)
        elif _why_not(m) is None:
            out.append((name, m))
    return out


def _deformable_from(conv: nn.Conv2d, version: int, offset_groups: int,
                     preserve_output: bool) -> DeformConv2dPack:
    cls = ModulatedDeformConv2dPack if version == 2 else DeformConv2dPack
    w = conv.weight
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
              conv.dilation, conv.groups, conv.bias is not None, offset_groups,
              device=w.device, dtype=w.dtype)
    with torch.no_grad():
        # v2 starts with mask sigmoid(0) = 0.5; doubling the weight compensates exactly (both
        # factors are powers of two, so 2w * 0.5 * x == w * x in floating point).
        new.weight.copy_(w * 2 if version == 2 and preserve_output else w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    new.weight.requires_grad_(w.requires_grad)
    if conv.bias is not None:
        new.bias.requires_grad_(conv.bias.requires_grad)
    new.train(conv.training)
    return new


def convert_to_deformable(model: nn.Module, version: Union[int, str] = 2,
                          names: Optional[Sequence[str]] = None,
                          filter: Optional[_Filter] = None, num_last: Optional[int] = 3,
                          offset_groups: int = 1, preserve_output: bool = True,
                          inplace: bool = True) -> Tuple[nn.Module, List[str]]:
    """Replace chosen ``nn.Conv2d`` layers of ``model`` with deformable layers.

    Each chosen convolution becomes a ``DeformConv2dPack`` (v1) or a
    ``ModulatedDeformConv2dPack`` (v2) with the same channels, kernel, stride, padding,
    dilation, groups, bias, device, dtype, training mode and ``requires_grad`` flags. Its
    ``conv_offset`` starts at zero, so it samples the regular grid.

    Starting as the same function. v1 copies ``weight`` and ``bias`` and computes exactly what
    the convolution computed. v2 layers start with the mmcv mask ``sigmoid(0) = 0.5``; with
    ``preserve_output=True`` (default) the copied ``weight`` is multiplied by 2, which undoes the
    0.5 exactly in floating point (both are powers of two), while the mask keeps its full
    gradient ``sigmoid'(0) = 1/4`` and the layer stays mmcv-checkpoint compatible. (A large
    mask-logit bias instead would give a mask of 1 only approximately and would stall the mask's
    gradient.) With ``preserve_output=False`` the weight is copied as is and a v2 layer starts at
    half the convolution's output before the bias, as a fresh mmcv layer would.

    Which convolutions: eligible ones are plain ``nn.Conv2d`` (not subclasses) with a kernel
    larger than 1x1, ``padding_mode='zeros'`` and integer padding, outside existing deformable
    layers. ``names`` picks by qualified name (as in ``model.named_modules()``); otherwise the
    eligible ones accepted by ``filter(name, conv)`` are taken, the last ``num_last`` of them in
    module order (``None``: all). The default takes the last three, where the DCN papers found
    deformable layers most useful.

    Args:
        model (nn.Module): the network; a bare ``nn.Conv2d`` is converted and returned.
        version (int or str): 1/"v1" (offsets) or 2/"v2" (offsets and mask).
        names (sequence of str, optional): exactly the convolutions to convert.
        filter (callable, optional): ``filter(name, conv) -> bool`` restricts the candidates.
        num_last (int, optional): how many of the last candidates to convert.
        offset_groups (int): offset groups of each new layer; must divide its input channels.
        preserve_output (bool): v2 only, see above.
        inplace (bool): modify ``model`` itself; ``False`` converts a deep copy.

    Returns:
        (model, converted): the converted model (the same object when ``inplace``, unless the
        root itself was converted) and the qualified names of the converted layers.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        ...                     nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 2, 1))
        >>> net, done = convert_to_deformable(net, version=1, num_last=1)
        >>> done, type(net[2]).__name__
        (['2'], 'DeformConv2dPack')
    """
    v = _version(version)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if names is not None and filter is not None:
        raise ValueError("give names or filter, not both")
    if num_last is not None and (isinstance(num_last, bool) or not isinstance(num_last, int)
                                 or num_last < 0):
        raise ValueError(f"num_last must be None or an int >= 0, got {num_last!r}")
    if not isinstance(offset_groups, int) or offset_groups < 1:
        raise ValueError(f"offset_groups must be an int >= 1, got {offset_groups!r}")
    if not inplace:
        model = copy.deepcopy(model)

    if names is not None:
        if isinstance(names, str):
            raise TypeError(f"names must be a sequence of str, got the str {names!r}")
        modules = dict(model.named_modules())
        chosen = []
        for n in names:
            if n not in modules:
                raise ValueError(f"names: no module named {n!r} in the model")
            reason = _why_not(modules[n])
            if reason is not None:
                raise ValueError(f"names: module {n!r} cannot be converted: it {reason}")
            chosen.append((n, modules[n]))
    else:
        chosen = [(n, m) for n, m in _eligible(model) if filter is None or filter(n, m)]
        if num_last is not None:
            chosen = chosen[len(chosen) - num_last:] if num_last else []

    for n, conv in chosen:
        if conv.in_channels % offset_groups:
            raise ValueError(f"offset_groups ({offset_groups}) must divide the input channels "
                             f"of {n!r} ({conv.in_channels})")
    converted = []
    for n, conv in chosen:
        new = _deformable_from(conv, v, offset_groups, preserve_output)
        if n == "":
            model = new
        else:
            parent_name, _, child = n.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)
        converted.append(n)
        logger.info("converted %s to %s", n or "<root>", type(new).__name__)
    return model, converted
