"""The implementations a benchmark compares, each behind the same small interface.

A contender is built once per problem (``setup``) and then called repeatedly; ``forward``
returns the output, ``train`` runs forward and backward. Contenders that cannot run here
(a package missing, no backward) report ``None`` for that mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Problem:
    """One benchmark shape: (N, C, H, W) to O channels, kH x kW kernel, v2 (with a mask)."""

    N: int
    C: int
    H: int
    W: int
    O: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    dilation: int = 1
    offset_groups: int = 1
    offset_std: float = 2.0

    @property
    def name(self) -> str:
        s = f"{self.N}x{self.C}x{self.H}x{self.W}->{self.O}"
        for k, v, d in (("s", self.stride, 1), ("d", self.dilation, 1),
                        ("og", self.offset_groups, 1)):
            if v != d:
                s += f",{k}{v}"
        return s

    def out_hw(self):
        k = self.kernel
        oH = (self.H + 2 * self.padding - self.dilation * (k - 1) - 1) // self.stride + 1
        oW = (self.W + 2 * self.padding - self.dilation * (k - 1) - 1) // self.stride + 1
        return oH, oW

    def tensors(self, seed: int = 0, grad_out: bool = True):
        """input, offset, weight, bias, mask and (``grad_out``) an output gradient, else None."""
        g = torch.Generator().manual_seed(seed)
        K = self.kernel * self.kernel
        oH, oW = self.out_hw()
        x = torch.randn(self.N, self.C, self.H, self.W, generator=g)
        w = torch.randn(self.O, self.C, self.kernel, self.kernel, generator=g) * 0.05
        b = torch.randn(self.O, generator=g)
        off = torch.randn(self.N, 2 * self.offset_groups * K, oH, oW, generator=g)
        off *= self.offset_std
        m = torch.rand(self.N, self.offset_groups * K, oH, oW, generator=g)
        go = torch.randn(self.N, self.O, oH, oW, generator=g) if grad_out else None
        return x, off, w, b, m, go


Fn = Optional[Callable[[], object]]


def _train_fn(fwd: Callable[..., Tensor], leaves, go: Tensor) -> Callable[[], object]:
    def run():
        for t in leaves:
            t.grad = None
        fwd().backward(go)
    return run


def conv2d(p: Problem) -> Dict[str, Fn]:
    """The floor: nn.Conv2d of the same shape (same multiply-adds, no sampling)."""
    x, _, w, b, _, go = p.tensors()
    conv = torch.nn.Conv2d(p.C, p.O, p.kernel, p.stride, p.padding, p.dilation)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
    xg = x.clone().requires_grad_()
    return {"forward": lambda: conv(x), "train": _train_fn(lambda: conv(xg),
                                                             [xg, *conv.parameters()], go)}


def _functional(op, p: Problem) -> Dict[str, Fn]:
    """A contender with torchvision's functional signature ``op(x, offset, w, b, ..., mask)``."""
    x, off, w, b, m, go = p.tensors()
    args = dict(stride=p.stride, padding=p.padding, dilation=p.dilation)
    leaves = [t.clone().requires_grad_() for t in (x, off, w, b, m)]

    def fwd_train():
        xl, ol, wl, bl, ml = leaves
        return op(xl, ol, wl, bl, mask=ml, **args)

    return {"forward": lambda: op(x, off, w, b, mask=m, **args),
            "train": _train_fn(fwd_train, leaves, go)}


def deformconv(p: Problem) -> Dict[str, Fn]:
    from ..ops import deform_conv2d

    return _functional(deform_conv2d, p)


def grid_sample_baseline(p: Problem) -> Dict[str, Fn]:
    """The straightforward pure-PyTorch version: grid_sample every tap, then one matmul."""
    x, off, w, b, m, go = p.tensors()
    leaves = [t.clone().requires_grad_() for t in (x, off, w, b, m)]

    def fwd(x, off, w, b, m):
        N, C, H, W = x.shape
        k, G = p.kernel, p.offset_groups
        K = k * k
        oH, oW = p.out_hw()
        oy = torch.arange(oH, dtype=x.dtype) * p.stride - p.padding
        ox = torch.arange(oW, dtype=x.dtype) * p.stride - p.padding
        off = off.view(N, G, K, 2, oH, oW)
        cols = []
        for g in range(G):
            xg = x[:, g * C // G:(g + 1) * C // G]
            for t in range(K):
                i, j = divmod(t, k)
                y = oy.view(1, oH, 1) + i * p.dilation + off[:, g, t, 0]
                xx = ox.view(1, 1, oW) + j * p.dilation + off[:, g, t, 1]
                # Pixel centres at integers, align_corners=True; guard 1-pixel sizes.
                grid = torch.stack((2 * xx / max(W - 1, 1) - 1, 2 * y / max(H - 1, 1) - 1), -1)
                s = F.grid_sample(xg, grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=True)
                cols.append(s * m[:, g * K + t].unsqueeze(1))
        # (N, G*K, C/G, oH, oW) -> (N, C, K, P) -> matmul with the weight (O, C*K)
        col = torch.stack(cols, 1).view(N, G, K, C // G, oH * oW).permute(0, 1, 3, 2, 4)
        out = w.view(w.shape[0], -1) @ col.reshape(N, C * K, oH * oW)
        return (out + b.view(1, -1, 1)).view(N, -1, oH, oW)

    return {"forward": lambda: fwd(x, off, w, b, m),
            "train": _train_fn(lambda: fwd(*leaves), leaves, go)}


def onnxruntime_deformconv(p: Problem) -> Dict[str, Fn]:
    """onnxruntime's DeformConv (opset 19), inference only, with torch's thread count."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return {"forward": None, "train": None}
    x, off, w, b, m, _ = p.tensors()
    feeds = {"X": x, "W": w, "offset": off, "B": b, "mask": m}
    node = helper.make_node(
        "DeformConv", list(feeds), ["Y"], kernel_shape=[p.kernel, p.kernel],
        strides=[p.stride] * 2, dilations=[p.dilation] * 2, pads=[p.padding] * 4, group=1,
        offset_group=p.offset_groups)
    graph = helper.make_graph(
        [node], "deformconv_bench",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape))
         for k, v in feeds.items()],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    # Its threads otherwise busy-wait after each run, taking the cores from the next contender.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    np_feeds = {k: v.numpy() for k, v in feeds.items()}
    return {"forward": lambda: sess.run(None, np_feeds), "train": None}


def torchvision_deformconv(p: Problem) -> Dict[str, Fn]:
    try:
        from torchvision.ops import deform_conv2d as tv
        tv(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 1, 1))
    except Exception:  # not installed, or its compiled ops do not load with this torch
        return {"forward": None, "train": None}
    return _functional(tv, p)


CONTENDERS = {
    "conv2d": conv2d,
    "deformconv": deformconv,
    "onnxruntime": onnxruntime_deformconv,
    "torchvision": torchvision_deformconv,
    "grid_sample+matmul": grid_sample_baseline,
}
