"""ONNX export (dynamo=True) of a model with the module: a decomposition into gathers (no
GridSample, no custom node) that onnxruntime runs, matching to 1e-5."""

from __future__ import annotations

import pytest
import torch

from deformconv import MultiScaleDeformableAttention, ms_deform_attn
from deformconv.ops.ms_deform_attn.onnx import ms_deform_attn_decomposed
from deformconv.ops.ms_deform_attn.reference import make_inputs
from deformconv.testing import assert_close

SHAPES = torch.tensor([[6, 8], [3, 4], [1, 2]])
STARTS = torch.tensor([0, 48, 60])


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = MultiScaleDeformableAttention(32, 4, 3, 2, dropout=0.0, batch_first=True)
        with torch.no_grad():
            for p in self.attn.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.2)

    def forward(self, query, value, reference_points, spatial_shapes, level_start_index):
        return self.attn(query, value=value, reference_points=reference_points,
                         spatial_shapes=spatial_shapes, level_start_index=level_start_index)


def test_decomposition_matches_the_op_with_hostile_locations():
    t = make_inputs(N=2, Q=7, M=3, D=4, margin=0.5, dtype=torch.float32)
    t["sampling_locations"][0, :2] = float("nan")
    t["sampling_locations"][1, :2, ..., 1] = -1e30
    args = [t[k] for k in ("value", "spatial_shapes", "level_start_index",
                           "sampling_locations", "attention_weights")]
    assert_close(ms_deform_attn_decomposed(*args), ms_deform_attn(*args))


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    model = _Model().eval()
    g = torch.Generator().manual_seed(2)
    inputs = (torch.randn(2, 5, 32, generator=g), torch.randn(2, 62, 32, generator=g),
              torch.rand(2, 5, 3, 2, generator=g), SHAPES, STARTS)
    path = str(tmp_path / "msda.onnx")
    N, Q = torch.export.Dim("N", min=1), torch.export.Dim("Q", min=1)
    torch.onnx.export(model, inputs, path, dynamo=True,
                      dynamic_shapes=({0: N, 1: Q}, {0: N}, {0: N, 1: Q}, None, None))
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert "GridSample" not in ops and "Gather" in ops, ops
    assert all(node.domain in ("", "ai.onnx") for node in onnx.load(path).graph.node)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    for N_, Q_ in ((2, 5), (3, 9)):
        feed_t = (torch.randn(N_, Q_, 32, generator=g), torch.randn(N_, 62, 32, generator=g),
                  torch.rand(N_, Q_, 3, 2, generator=g) * 1.2 - 0.1, SHAPES, STARTS)
        got = sess.run(None, {n: t.numpy() for n, t in zip(names, feed_t)})[0]
        with torch.no_grad():
            want = model(*feed_t)
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-5)
