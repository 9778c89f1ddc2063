"""ONNX export of deform_conv1d (a 2-D node onnxruntime runs) and deform_conv3d (the N-D node,
valid under the checker and shape inference)."""

import logging
import warnings

import pytest
import torch

from deformconv import DeformConv1d, DeformConv3d, ModulatedDeformConv1dPack
from deformconv.testing import Problem

onnx, ort, _ = (pytest.importorskip(m) for m in ("onnx", "onnxruntime", "onnxscript"))
logging.getLogger("torch.onnx").setLevel(logging.ERROR)
needs_symbolic = pytest.mark.skipif(not hasattr(torch.onnx, "ops"),
                                    reason="plain export needs torch.onnx.ops (torch >= 2.8)")
EXPORTERS = [pytest.param(True, marks=needs_symbolic, id="dynamo"),
             pytest.param(False, id="torchscript")]


class Explicit(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.conv = layer

    def forward(self, x, offset, mask):
        return self.conv(x, offset, mask)


def _export(model, args, path, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=dynamo, opset_version=19)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    nodes = [n for n in proto.graph.node if n.op_type == "DeformConv"]
    assert len(nodes) == 1 and nodes[0].domain == ""
    return proto, nodes[0]


def _attrs(node):
    return {a.name: (list(a.ints) if a.ints else a.i) for a in node.attribute}


def _run(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0])


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_1d_runs_in_onnxruntime(tmp_path, dynamo):
    torch.manual_seed(0)
    prob = Problem(N=2, C=4, O=6, size=(13,), kernel=(3,), stride=2, padding=2, dilation=2,
                   groups=2, offset_groups=2)
    t = prob.tensors(torch.float32)
    model = Explicit(DeformConv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)).eval()
    args = (t["input"], t["offset"], t["mask"])
    _, node = _export(model, args, tmp_path / "m.onnx", dynamo)
    assert _attrs(node)["kernel_shape"] == [1, 3] and _attrs(node)["pads"] == [0, 2, 0, 2]
    got = _run(tmp_path / "m.onnx", args)
    with torch.no_grad():
        want = model(*args)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_1d_pack_layer_runs_in_onnxruntime(tmp_path, dynamo):
    torch.manual_seed(0)
    layer = ModulatedDeformConv1dPack(3, 5, 3, padding=1).eval()
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.5)
    x = torch.randn(2, 3, 10)
    _export(layer, (x,), tmp_path / "m.onnx", dynamo)
    with torch.no_grad():
        want = layer(x)
    got = _run(tmp_path / "m.onnx", (x,))
    assert (got - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_3d_node_passes_checker_and_shape_inference(tmp_path, dynamo):
    prob = Problem(N=1, C=4, O=2, size=(4, 5, 6), kernel=(3, 2, 3), stride=(1, 2, 1),
                   padding=(1, 0, 1), dilation=(1, 1, 2), offset_groups=2)
    t = prob.tensors(torch.float32)
    model = Explicit(DeformConv3d(4, 2, (3, 2, 3), (1, 2, 1), (1, 0, 1), (1, 1, 2))).eval()
    proto, node = _export(model, (t["input"], t["offset"], t["mask"]), tmp_path / "m.onnx",
                          dynamo)
    a = _attrs(node)
    assert a["kernel_shape"] == [3, 2, 3] and a["pads"] == [1, 0, 1, 1, 0, 1]
    assert a["strides"] == [1, 2, 1] and a["dilations"] == [1, 1, 2]
    assert a["offset_group"] == 2
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    out = inferred.graph.output[0].type.tensor_type.shape
    assert [d.dim_value for d in out.dim] == [1, 2, *prob.out]


@needs_symbolic
@pytest.mark.parametrize("Layer", [DeformConv1d, DeformConv3d])
def test_dynamo_below_opset_19_names_the_opset(tmp_path, Layer):
    # The 2-D op's rule for the N-D ops: onnxruntime has no DeformConv below opset 19.
    R = 1 if Layer is DeformConv1d else 3
    prob = Problem(N=1, C=2, O=2, size=(5,) * R, kernel=(3,) * R, padding=1)
    t = prob.tensors(torch.float32)
    model = Explicit(Layer(2, 2, 3, padding=1)).eval()
    with warnings.catch_warnings(), pytest.raises(Exception, match=r"opset 19 or newer.*=18"):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (t["input"], t["offset"], t["mask"]), str(tmp_path / "m.onnx"),
                          dynamo=True, opset_version=18)
