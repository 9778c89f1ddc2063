"""The demo's network: a small CNN whose last three 3x3 convolutions can become deformable."""

from __future__ import annotations

import os
from typing import List, Tuple

import torch
from torch import nn

from ..convert import convert_to_deformable

#: Feature pixel ``p`` of the last stage sits at image pixel ``STRIDE * p + OFFSET`` (two 2x2
#: max-pools: the centre of a 4x4 block).
STRIDE, OFFSET = 4, 1.5


class DigitNet(nn.Module):
    """Two plain stages down to 1/4 resolution, three 3x3 convolutions, global max pooling and
    a linear head.

    Shape: ``(N, 1, S, S) -> (N, 10)`` logits for any canvas size ``S`` divisible by 4.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        h = width // 2
        # No batch normalisation: per-process batch statistics would make DDP training differ
        # from one process on the same global batch.
        self.features = nn.Sequential(
            nn.Conv2d(1, h, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(h, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width, 10)
        for m in self.features:
            if isinstance(m, nn.Conv2d):  # He init keeps the signal alive through the ReLUs
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax((2, 3)))

    def last_stage(self) -> List[nn.Module]:
        """The three convolutions of the last stage (deformable or not), first to last."""
        return [self.features[i] for i in (6, 8, 10)]


def build_model(deformable: bool, version: int = 2, width: int = 32,
                seed: int = 0) -> Tuple[DigitNet, List[str]]:
    """A ``DigitNet`` initialised from ``seed``; with ``deformable`` its last three 3x3
    convolutions are converted (so both variants start as the same function)."""
    torch.manual_seed(seed)
    net = DigitNet(width)
    if not deformable:
        return net, []
    return convert_to_deformable(net, version=version, num_last=3)


def model_from_state_dict(state: dict) -> DigitNet:
    """Rebuild the demo's network (plain, v1 or v2, any width) from a saved state dict."""
    width = state["head.weight"].shape[1]
    offs = [k for k in state if k.endswith("conv_offset.weight")]
    if offs:
        version = 2 if state[offs[0]].shape[0] == 27 else 1
        net, _ = build_model(True, version, width)
    else:
        net, _ = build_model(False, 2, width)
    net.load_state_dict(state)
    return net


def load_model(path: str):
    """The demo network saved at ``path``; ``ValueError`` naming ``--model`` otherwise."""
    if not os.path.isfile(path):
        raise ValueError(f"--model: no model at {path!r}; run `deformconv demo` first or pass "
                         f"--model")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or pickles more than tensors
        raise ValueError(f"--model: expected a state dict saved by `deformconv demo`, got "
                         f"{path!r}, which torch.load cannot read ({type(e).__name__})") \
            from None
    if not isinstance(state, dict) or "head.weight" not in state:
        raise ValueError(f"--model: expected a state dict saved by `deformconv demo`, got "
                         f"{path!r}, which holds a {type(state).__name__} without "
                         f"'head.weight'")
    if not any(k.endswith("conv_offset.weight") for k in state):
        raise ValueError(f"--model: {path!r} is a plain demo network without deformable "
                         f"layers (it samples the regular grid); pass a deformable_seedN.pt")
    try:
        return model_from_state_dict(state)
    except Exception as e:  # right keys, wrong shapes
        raise ValueError(f"--model: expected a state dict saved by `deformconv demo`, got "
                         f"{path!r}, which does not load into the demo network "
                         f"({type(e).__name__})") from None
