"""Training and evaluation for the demo, on one process or under ``torchrun`` with DDP.

Under ``torchrun --nproc_per_node=N`` every process builds the same global batch (same
generator) and trains on its slice ``rank::N``; DistributedDataParallel averages the
gradients, which equals the gradient of the mean loss over the global batch. So N processes
compute what one process computes on the same global batch, up to float rounding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .data import Digits, Placed, place_on_canvas


@dataclass
class Dist:
    """Where this process stands: ``rank`` of ``world`` processes, on ``device``."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def init_distributed(device: str) -> Dist:
    """Join the process group when started by ``torchrun`` (WORLD_SIZE > 1): NCCL on GPUs,
    gloo on CPUs. One process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return Dist(0, 1, dev)
    import torch.distributed as dist
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), dev)


def train_model(model: nn.Module, train: Digits, epochs: int, seed: int, dist: Dist,
                batch_size: int = 64, lr: float = 2e-3, canvas: int = 32,
                progress=None, optimizer: str = "adam") -> nn.Module:
    """Adam (or SGD with momentum 0.9) on the cross-entropy, fresh placements every epoch.

    The data stream depends only on ``seed`` (not on the model or the process), so the plain
    and the deformable network see the same images in the same order. Incomplete last
    batches are dropped, so every process always holds ``batch_size / world`` samples.
    ``progress`` (a tqdm bar or None) is advanced once per step.

    Adam divides each gradient by its running magnitude, so where a gradient is near zero
    (about Adam's eps) the float rounding differences between one and N processes can grow
    to a visible fraction of ``lr``; SGD keeps them at rounding size.

    Returns the trained model (unwrapped from DDP).
    """
    if batch_size % dist.world:
        raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of "
                         f"processes ({dist.world})")
    model.to(dist.device).train()
    net = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[dist.device]
                                      if dist.device.type == "cuda" else None)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    steps = len(train.labels) // batch_size
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        data = place_on_canvas(train, g, canvas)
        order = torch.randperm(len(train.labels), generator=g)
        for b in range(steps):
            idx = order[b * batch_size:(b + 1) * batch_size][dist.rank::dist.world]
            x = data.images[idx].to(dist.device)
            y = data.labels[idx].to(dist.device)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, data: Placed, device: torch.device,
            batch_size: int = 256) -> torch.Tensor:
    """Predicted classes Tensor[M] (on the CPU)."""
    model.eval()
    out = [model(data.images[i:i + batch_size].to(device)).argmax(1).cpu()
           for i in range(0, len(data.labels), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def steps_per_run(train: Digits, epochs: int, batch_size: int = 64) -> int:
    return epochs * (len(train.labels) // batch_size)


def finish(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as d
        if d.is_initialized():
            d.destroy_process_group()


__all__ = ["Dist", "resolve_device", "init_distributed", "train_model", "predict",
           "steps_per_run", "finish"]
