"""dcnv3 / dcnv4 export to ONNX (dynamo) as a decomposition that onnxruntime runs."""

from __future__ import annotations

import pytest
import torch

import deformconv
from deformconv.ops.dcnv3.onnx import dcnv3_decomposed
from deformconv.ops.dcnv4.onnx import dcnv4_decomposed
from deformconv.testing import assert_close
from deformconv.testing_dcn import CASES, LEAVES

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize("name", sorted(CASES))
def test_decomposition_equals_the_op(name):
    """The decomposition is the op: float64, every case (hostile offsets in far-offsets)."""
    p = CASES[name]
    t = p.tensors()
    args = [t[k] for k in LEAVES]
    want = deformconv.dcnv3(*args, *p.params())
    assert_close(dcnv3_decomposed(*args, *p.params()), want, tol=1e-14)
    assert_close(dcnv4_decomposed(t["input"], t["offset_mask"], *p.params()), want, tol=1e-14)


class Both(torch.nn.Module):
    def __init__(self, p):
        super().__init__()
        self.params = p.params()

    def forward(self, x, off, m, om):
        return deformconv.dcnv3(x, off, m, *self.params), deformconv.dcnv4(x, om, *self.params)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "remove-center-5x3", "asym"])
def test_dynamo_export_runs_in_onnxruntime(name, tmp_path):
    p = CASES[name]
    t = p.tensors(torch.float32)
    t["offset"][0, 0, 0, :3] = torch.tensor([float("nan"), 1e30, -40.0])
    t["offset_mask"][0, 0, 0, :3] = torch.tensor([float("nan"), 1e30, -40.0])
    args = (t["input"], t["offset"], t["mask"], t["offset_mask"])
    path = tmp_path / "dcn.onnx"
    torch.onnx.export(Both(p), args, str(path), dynamo=True)
    import onnx

    graph = onnx.load(str(path)).graph
    kinds = {n.op_type for n in graph.node}
    assert "Gather" in kinds or "GatherND" in kinds or "GatherElements" in kinds, kinds
    assert not any(n.domain.startswith("deformconv") for n in graph.node)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)}
    y3, y4 = sess.run(None, feeds)
    w3, w4 = Both(p)(*args)
    assert_close(torch.from_numpy(y3), w3, tol=1e-5)
    assert_close(torch.from_numpy(y4), w4, tol=1e-5)
