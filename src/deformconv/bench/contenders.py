"""The implementations a benchmark compares, each behind the same small interface.

A contender is built once per problem (``setup``) and then called repeatedly; ``forward``
returns the output, ``train`` runs forward and backward. Contenders that cannot run here
(a package missing, no backward) report ``None`` for that mode.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..testing import Problem


def problem(N: int, C: int, H: int, W: int, O: int, **kwargs) -> Problem:
    """A benchmark shape: (N, C, H, W) to O channels, 3x3 kernel, padding 1, v2 (mask and
    bias), offsets of 2 pixels, weights scaled by 0.05; ``kwargs`` override any field."""
    args = dict(N=N, C=C, O=O, size=(H, W), kernel=(3, 3), padding=1, weight_scale=0.05)
    args.update(kwargs)
    return Problem(**args)


def label(p: Problem) -> str:
    """Short row label: the shape, then stride/dilation/offset groups where not 1."""
    s = f"{p.N}x{p.C}x{'x'.join(map(str, p.size))}->{p.O}"
    for k, v in (("s", p.stride), ("d", p.dilation), ("og", p.offset_groups)):
        if v != 1:
            s += f",{k}{v}"
    return s


def bench_tensors(p: Problem, seed: int = 0):
    """input, offset, weight, bias, mask and an output gradient, float32."""
    t = p.tensors(torch.float32, seed=seed)
    return (t["input"], t["offset"], t["weight"], t["bias"], t["mask"],
            p.grad_out(torch.float32, seed=seed + 1))


Fn = Optional[Callable[[], object]]


def _train_fn(fwd: Callable[..., Tensor], leaves, go: Tensor) -> Callable[[], object]:
    def run():
        for t in leaves:
            t.grad = None
        fwd().backward(go)
    return run


def conv2d(p: Problem) -> Dict[str, Fn]:
    """The floor: nn.Conv2d of the same shape (same multiply-adds, no sampling)."""
    x, _, w, b, _, go = bench_tensors(p)
    conv = torch.nn.Conv2d(p.C, p.O, p.kernel, p.strides, p.paddings, p.dilations,
                           groups=p.groups)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
    xg = x.clone().requires_grad_()
    return {"forward": lambda: conv(x), "train": _train_fn(lambda: conv(xg),
                                                             [xg, *conv.parameters()], go)}


def _functional(op, p: Problem) -> Dict[str, Fn]:
    """A contender with torchvision's functional signature ``op(x, offset, w, b, ..., mask)``."""
    x, off, w, b, m, go = bench_tensors(p)
    args = p.kwargs()
    leaves = [t.clone().requires_grad_() for t in (x, off, w, b, m)]
    return {"forward": lambda: op(x, off, w, b, mask=m, **args),
            "train": _train_fn(lambda: op(*leaves[:4], mask=leaves[4], **args), leaves, go)}


def deformconv(p: Problem) -> Dict[str, Fn]:
    from ..ops import deform_conv2d

    return _functional(deform_conv2d, p)


def grid_sample_baseline(p: Problem) -> Dict[str, Fn]:
    """The straightforward pure-PyTorch version: grid_sample every tap, then one matmul."""
    x, off, w, b, m, go = bench_tensors(p)
    leaves = [t.clone().requires_grad_() for t in (x, off, w, b, m)]
    (sh, sw), (ph, pw), (dh, dw) = p.strides, p.paddings, p.dilations

    def fwd(x, off, w, b, m):
        N, C, H, W = x.shape
        kW, G, K = p.kernel[1], p.offset_groups, p.taps
        oH, oW = p.out
        oy = torch.arange(oH, dtype=x.dtype) * sh - ph
        ox = torch.arange(oW, dtype=x.dtype) * sw - pw
        off = off.view(N, G, K, 2, oH, oW)
        cols = []
        for g in range(G):
            xg = x[:, g * C // G:(g + 1) * C // G]
            for t in range(K):
                i, j = divmod(t, kW)
                y = oy.view(1, oH, 1) + i * dh + off[:, g, t, 0]
                xx = ox.view(1, 1, oW) + j * dw + off[:, g, t, 1]
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


def unavailable(name: str) -> Optional[str]:
    """Why the optional contender ``name`` cannot run here, or None when it can."""
    try:
        if name == "torchvision":
            from torchvision.ops import deform_conv2d
            deform_conv2d(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2),
                          torch.zeros(1, 1, 1, 1))
        elif name == "onnxruntime":
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
    except Exception as e:  # not installed, or its compiled ops do not load with this torch
        return f"{type(e).__name__}: {e}"
    return None


def onnxruntime_deformconv(p: Problem) -> Dict[str, Fn]:
    """onnxruntime's DeformConv (opset 19), inference only, with torch's thread count."""
    if unavailable("onnxruntime"):
        return {"forward": None, "train": None}
    import onnxruntime as ort
    from onnx import TensorProto, helper
    x, off, w, b, m, _ = bench_tensors(p)
    feeds = {"X": x, "W": w, "offset": off, "B": b, "mask": m}
    node = helper.make_node(
        "DeformConv", list(feeds), ["Y"], kernel_shape=list(p.kernel), strides=list(p.strides),
        dilations=list(p.dilations), pads=list(p.paddings) * 2, group=p.groups,
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
    if unavailable("torchvision"):
        return {"forward": None, "train": None}
    from torchvision.ops import deform_conv2d as tv
    return _functional(tv, p)


CONTENDERS = {
    "conv2d": conv2d,
    "deformconv": deformconv,
    "onnxruntime": onnxruntime_deformconv,
    "torchvision": torchvision_deformconv,
    "grid_sample+matmul": grid_sample_baseline,
}
