"""Swap ordinary convolutions of a model for deformable ones that start as the same function."""

from __future__ import annotations

import copy
import logging
from typing import Callable, List, Optional, Sequence, Tuple, Union

from torch import nn

from .nn.deform_conv import _DeformConvNd, deformable_from_conv

logger = logging.getLogger(__name__)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_Filter = Callable[[str, nn.Module], bool]


def _version(version: Union[int, str]) -> int:
    v = {1: 1, 2: 2, "v1": 1, "v2": 2, "1": 1, "2": 2}.get(
        version.lower() if isinstance(version, str) else version)
    if v is None or isinstance(version, bool):
        raise ValueError(f"version must be 1, 2, 'v1' or 'v2', got {version!r}")
    return v


def _why_not(conv: nn.Module, include_grouped: bool = True) -> Optional[str]:
    """Why ``conv`` is not converted, or None when it is."""
    if type(conv) not in _CONVS:
        return f"is a {type(conv).__name__}, not an nn.Conv1d, nn.Conv2d or nn.Conv3d"
    if set(conv.kernel_size) == {1}:
        return f"has a {'x'.join('1' * len(conv.kernel_size))} kernel (nothing to deform)"
    if conv.padding_mode != "zeros":
        return f"has padding_mode={conv.padding_mode!r}; deformable layers pad with zeros"
    if conv.groups > 1 and not include_grouped:
        kind = "depthwise" if conv.groups == conv.in_channels else "grouped"
        return (f"is a {kind} convolution (groups={conv.groups}): its dense offset predictor "
                f"would cost more than the layer; pass include_grouped=True to convert it")
    return None


def _eligible(model: nn.Module, include_grouped: bool) -> List[Tuple[str, nn.Module]]:
    """Convertible convolutions in module order, skipping those inside deformable layers and
    logging why each other ``nn.Conv1d/2d/3d`` is skipped. A module used at several places
    appears once, under its first name (``named_modules`` removes duplicates)."""
    out, inside = [], []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(m, _DeformConvNd):
            inside.append(name)
            continue
        reason = _why_not(m, include_grouped)
        if reason is None:
            out.append((name, m))
        elif isinstance(m, _CONVS):
            logger.info("skipped %s: it %s", name or "<root>", reason)
    return out


def convert_to_deformable(model: nn.Module, version: Union[int, str] = 2,
                          names: Optional[Sequence[str]] = None,
                          filter: Optional[_Filter] = None, num_last: Optional[int] = 3,
                          offset_groups: int = 1, preserve_output: bool = True,
                          inplace: bool = True,
                          include_grouped: bool = False) -> Tuple[nn.Module, List[str]]:
    """Replace chosen ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` layers of ``model`` with
    deformable layers of the same dimensionality.

    Each chosen convolution becomes a ``DeformConv{R}dPack`` (v1) or a
    ``ModulatedDeformConv{R}dPack`` (v2), ``R`` its number of spatial dimensions, with the same
    channels, kernel, stride, padding (``'same'`` and ``'valid'`` included),
    dilation, groups, bias, device, dtype, training mode and ``requires_grad`` flags. Its
    ``conv_offset`` starts at zero, so it samples the regular grid; it is frozen
    (``requires_grad=False``) when all of the convolution's parameters were, so a frozen
    backbone stage stays frozen. A convolution used at several places (one module object
    called twice) becomes one converted module at all of them, so its uses keep sharing
    their weights; it is converted and counted once, under its first name.

    Starting as the same function, also after loading plain weights. ``weight`` and ``bias`` are
    copied unchanged, so the converted layer keeps the plain layer's parameter meaning. v1
    computes exactly what the convolution computed. A directly built v2 layer starts with mmcv's
    mask ``sigmoid(0) = 0.5``; a converted one (``preserve_output=True``, default) gets a
    persistent buffer ``mask_gain = 2`` and uses the mask ``2 * sigmoid(logits)``, exactly 1 at
    the start (a power of two, so ``w * 1 * x`` is ``w * x`` in floating point), with the mask
    gradient ``2 * sigmoid'(0) = 1/2``. Because the weight is not rescaled:

    - loading the plain model's state dict into the converted model afterwards (as frameworks
      do, ``strict=False`` or ``strict=True``) gives the plain model's function: the converted
      layers accept a state dict holding only ``weight``/``bias`` and reset ``conv_offset`` to
      zero;
    - converting after loading gives the same;
    - a converted model's own state dict carries ``mask_gain`` and round-trips, also into
      directly built ``ModulatedDeformConv{R}dPack`` layers;
    - an mmcv checkpoint (``conv_offset`` keys, no ``mask_gain``) loaded into a converted layer
      switches it to mmcv's ``sigmoid(logits)`` mask; directly built layers are mmcv's layer.

    With ``preserve_output=False`` no gain is set and a v2 layer starts at half the
    convolution's output before the bias, as a fresh mmcv layer would.

    Which convolutions: eligible ones are plain ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d``
    (not subclasses) with a kernel of more than one tap (not 1, 1x1, 1x1x1),
    ``padding_mode='zeros'``, outside existing deformable layers, and,
    unless ``include_grouped=True``, with ``groups == 1``: a depthwise or grouped convolution
    is cheap, and the dense offset predictor added to it (``in_channels`` to ``3*kH*kW``
    channels in 2-D) would cost more than the layer itself (on ConvNeXt-T it added 58%
    parameters and nearly doubled the inference time). The log (``logging``, logger
    ``deformconv.convert``, level INFO) names every skipped convolution and why. ``names``
    picks by qualified name (as in ``model.named_modules()``; grouped ones included); otherwise
    the eligible ones accepted by ``filter(name, conv)`` are taken, the last
    ``min(num_last, eligible)`` of them in module order (``None``: all), counting all three
    dimensionalities together. The default takes the
    last three, where the DCN papers found deformable layers most useful.

    Args:
        model (nn.Module): the network; a bare convolution is converted and returned.
        version (int or str): 1/"v1" (offsets) or 2/"v2" (offsets and mask).
        names (sequence of str, optional): exactly the convolutions to convert.
        filter (callable, optional): ``filter(name, conv) -> bool`` restricts the candidates.
        num_last (int, optional): how many of the last candidates to convert.
        offset_groups (int): offset groups of each new layer; must divide its input channels.
        preserve_output (bool): v2 only, see above.
        include_grouped (bool): also convert grouped and depthwise convolutions.
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
        # every name of a module used at several places (the default keeps the first only)
        modules = dict(model.named_modules(remove_duplicate=False))
        chosen, seen = [], set()
        for n in names:
            if n not in modules:
                raise ValueError(f"names: no module named {n!r} in the model")
            reason = _why_not(modules[n])
            if reason is not None:
                raise ValueError(f"names: module {n!r} cannot be converted: it {reason}")
            if id(modules[n]) not in seen:  # another name of one already chosen: once
                seen.add(id(modules[n]))
                chosen.append((n, modules[n]))
    else:
        chosen = [(n, m) for n, m in _eligible(model, include_grouped)
                  if filter is None or filter(n, m)]
        if num_last is not None:
            start = max(len(chosen) - num_last, 0)
            for n, _ in chosen[:start]:
                logger.info("skipped %s: not among the last num_last=%d eligible convolutions",
                            n or "<root>", num_last)
            chosen = chosen[start:]

    for n, conv in chosen:
        if conv.in_channels % offset_groups:
            raise ValueError(f"offset_groups ({offset_groups}) must divide the input channels "
                             f"of {n!r} ({conv.in_channels})")
    # Every new layer is built before the model changes: a failure leaves it as it was.
    converted, new_of = [], {}
    for n, conv in chosen:
        try:
            new = deformable_from_conv(conv, v, offset_groups, preserve_output)
        except ValueError as e:  # e.g. a padding the layer of that dimensionality lacks
            if names is not None:
                raise ValueError(f"names: module {n!r} cannot be converted: {e}") from None
            logger.info("skipped %s: %s", n or "<root>", e)
            continue
        new_of[id(conv)] = new
        converted.append(n)
        logger.info("converted %s to %s", n or "<root>", type(new).__name__)
    if id(model) in new_of:
        return new_of[id(model)], converted
    # Every place a converted module is a child: one used twice stays one (shared weights).
    for _, parent in model.named_modules(remove_duplicate=False):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in new_of:
                setattr(parent, child_name, new_of[id(child)])
    return model, converted
