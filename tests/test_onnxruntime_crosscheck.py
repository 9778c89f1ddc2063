"""An independent implementation: onnxruntime's DeformConv (opset 19) on a hand-built graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deformconv import deform_conv2d

from conftest import Case, assert_close_rel

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run_onnxruntime(case: Case, x, off, w, b, m):
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
        "DeformConv", node_inputs, ["Y"], kernel_shape=list(case.kernel),
        strides=list(case.stride), dilations=list(case.dilation),
        pads=[case.padding[0], case.padding[1], case.padding[0], case.padding[1]],
        group=case.groups, offset_group=case.offset_groups)
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(feeds[n].shape))
              for n in names if n in feeds]
    graph = helper.make_graph([node], "g", inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9  # what onnxruntime 1.25+ reads
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v.numpy() for k, v in feeds.items()})[0]


@pytest.mark.parametrize("case", [
    Case(), Case(mask=False, bias=False), Case(C=6, O=4, groups=2, offset_groups=3),
    Case(H=9, W=8, kernel=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    Case(H=5, W=5, offset_scale=5.0, kernel=(5, 5), padding=(2, 2)),
], ids=["v2", "v1", "groups", "asym", "far-offsets"])
def test_forward_matches_onnxruntime(case):
    x, off, w, b, m = case.tensors(torch.float32)
    ours = deform_conv2d(x, off, w, b, mask=m, **case.kwargs())
    theirs = torch.from_numpy(np.asarray(_run_onnxruntime(case, x, off, w, b, m)))
    assert_close_rel(ours, theirs, 1e-5, "output")
