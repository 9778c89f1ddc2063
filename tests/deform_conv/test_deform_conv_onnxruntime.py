"""An independent implementation: onnxruntime's DeformConv (opset 19) on a hand-built graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deformconv import deform_conv2d
from deformconv.testing import Problem, assert_close

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run_onnxruntime(p: Problem, x, off, w, b, m):
    from onnx import TensorProto, helper

    names = ["X", "W", "offset", "B", "mask"]
    feeds = {"X": x, "W": w, "offset": off}
    node_inputs = ["X", "W", "offset", "B" if b is not None else "", "mask" if m is not None
                   else ""]
    if b is not None:
        feeds["B"] = b
    if m is not None:
        feeds["mask"] = m
    while node_inputs[-1] == "":
        node_inputs.pop()
    node = helper.make_node(
        "DeformConv", node_inputs, ["Y"], kernel_shape=list(p.kernel), strides=list(p.strides),
        dilations=list(p.dilations), pads=list(p.paddings) * 2, group=p.groups,
        offset_group=p.offset_groups)
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(feeds[n].shape))
              for n in names if n in feeds]
    graph = helper.make_graph([node], "g", inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9  # what onnxruntime 1.25+ reads
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v.numpy() for k, v in feeds.items()})[0]


@pytest.mark.parametrize("p", [
    Problem(), Problem(mask=False, bias=False), Problem(C=6, O=4, groups=2, offset_groups=3),
    Problem(size=(9, 8), kernel=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    Problem(size=(5, 5), offset_scale=5.0, kernel=(5, 5), padding=2),
], ids=["v2", "v1", "groups", "asym", "far-offsets"])
def test_forward_matches_onnxruntime(p):
    t = p.tensors(torch.float32)
    x, off, w, b, m = (t[k] for k in ("input", "offset", "weight", "bias", "mask"))
    ours = deform_conv2d(x, off, w, b, mask=m, **p.kwargs())
    theirs = torch.from_numpy(np.asarray(_run_onnxruntime(p, x, off, w, b, m)))
    assert_close(ours, theirs, name="output")
