"""ONNX export of every dimensionality to the standard ``DeformConv`` node, by both exporters:
1-D (a 2-D node of unit height) and 2-D run in onnxruntime and match PyTorch at several input
sizes; 3-D (no runtime implements it) passes the full checker and strict shape inference."""

import logging
import warnings

import pytest
import torch

import deformconv
from deformconv.testing import Problem, assert_close

onnx, ort, _ = (pytest.importorskip(m) for m in ("onnx", "onnxruntime", "onnxscript"))
logging.getLogger("torch.onnx").setLevel(logging.ERROR)
needs_symbolic = pytest.mark.skipif(not hasattr(torch.onnx, "ops"),
                                    reason="plain export needs torch.onnx.ops (torch >= 2.8)")
EXPORTERS = [pytest.param(True, marks=needs_symbolic, id="dynamo"),
             pytest.param(False, id="torchscript")]
R_ALL = [1, 2, 3]
# Per R: kernel, stride, padding, dilation (asymmetric where there is more than one dimension).
GEOMETRY = {1: ((3,), (2,), (2,), (2,)),
            2: ((3, 2), (2, 1), (1, 2), (1, 2)),
            3: ((3, 2, 3), (1, 2, 1), (1, 0, 1), (1, 1, 2))}
SIZES = {1: [(13,), (17,), (9,)], 2: [(7, 9), (10, 5), (4, 12)], 3: [(4, 5, 6)]}
SPATIAL = {1: ["w"], 2: ["h", "w"], 3: ["d", "h", "w"]}


class Explicit(torch.nn.Module):
    """Offsets and mask given as model inputs (torchvision style)."""

    def __init__(self, layer):
        super().__init__()
        self.conv = layer

    def forward(self, x, offset, mask):
        return self.conv(x, offset, mask)


def _export(model, args, path, dynamo, dynamic=(), **kwargs):
    """Export; ``dynamic``: per input, the dims (index -> name) that may change."""
    names = [f"in{i}" for i in range(len(args))]
    if dynamic and dynamo:
        kwargs["dynamic_shapes"] = tuple(
            {i: torch.export.Dim(n, **({} if i == 0 else dict(min=4, max=64)))
             for i, n in d.items()} for d in dynamic)
    elif dynamic:
        kwargs.update(input_names=names, dynamic_axes=dict(zip(names, dynamic)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=dynamo, **kwargs)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    nodes = [n for n in proto.graph.node if n.op_type == "DeformConv"]
    assert len(nodes) == 1 and nodes[0].domain == ""
    assert {o.domain: o.version for o in proto.opset_import}[""] >= 19
    # The exporter writes an IR version that onnxruntime accepts: the file loads as written.
    assert proto.ir_version <= 10
    return proto, nodes[0]


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _check_attrs(node, R, groups, offset_groups):
    kernel, stride, padding, dilation = GEOMETRY[R]
    if R == 1:  # a 2-D node of unit height
        kernel, stride, padding, dilation = ((1, *kernel), (1, *stride), (0, *padding),
                                             (1, *dilation))
    a = _attrs(node)
    assert list(a["kernel_shape"]) == list(kernel) and list(a["strides"]) == list(stride)
    assert list(a["pads"]) == list(padding) * 2 and list(a["dilations"]) == list(dilation)
    assert a.get("group", 1) == groups and a.get("offset_group", 1) == offset_groups


def _check_runs(path, model, inputs_list):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for inputs in inputs_list:
        got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0]
        with torch.no_grad():
            want = model(*inputs)
        assert_close(torch.from_numpy(got), want, name=f"{tuple(inputs[0].shape)}")


def _check_shape_inference(proto, shape):
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    out = inferred.graph.output[0].type.tensor_type.shape
    assert [d.dim_value for d in out.dim] == list(shape)


def _layer(R, kind, *args, **kwargs):
    return getattr(deformconv, kind.format(R=R))(*args, **kwargs)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("R", R_ALL)
def test_explicit_offsets_and_mask(tmp_path, R, dynamo):
    kernel, stride, padding, dilation = GEOMETRY[R]
    geo = dict(stride=stride, padding=padding, dilation=dilation)
    layer = _layer(R, "DeformConv{R}d", 4, 6, kernel, groups=2, **geo)
    model = Explicit(layer).eval()
    probs = [Problem(N=n, C=4, O=6, size=s, kernel=kernel, groups=2, offset_groups=2,
                     offset_scale=3.0, **geo) for n, s in zip((2, 4), SIZES[R][:1] * 2)]
    inputs = []
    for i, p in enumerate(probs):
        t = p.tensors(torch.float32, seed=i)
        inputs.append((t["input"], t["offset"], t["mask"]))
    dynamic = [{0: "n"}] * 3 if R < 3 else ()
    proto, node = _export(model, inputs[0], tmp_path / "e.onnx", dynamo, dynamic,
                          opset_version=19)
    _check_attrs(node, R, groups=2, offset_groups=2)
    if R < 3:
        _check_runs(tmp_path / "e.onnx", model, inputs)
    else:
        _check_shape_inference(proto, (2, 6, *probs[0].out))


@pytest.mark.parametrize("v2,bias", [(True, False), (False, True)], ids=["v2-nobias", "v1"])
@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("R", R_ALL)
def test_pack_layer(tmp_path, R, dynamo, v2, bias):
    gen = torch.Generator().manual_seed(0)
    kernel, stride, padding, dilation = GEOMETRY[R]
    kind = "ModulatedDeformConv{R}dPack" if v2 else "DeformConv{R}dPack"
    model = _layer(R, kind, 6, 4, kernel, stride=stride, padding=padding, dilation=dilation,
                   groups=2, offset_groups=3, bias=bias)
    with torch.no_grad():  # offsets of a few pixels, mask away from 0.5
        model.conv_offset.weight.normal_(0, 0.3, generator=gen)
        model.conv_offset.bias.normal_(0, 1, generator=gen)
    model.eval()
    xs = [(torch.randn(n, 6, *s, generator=gen),) for n, s in zip((2, 3, 1), SIZES[R])]
    dynamic = [{0: "n", **{2 + i: d for i, d in enumerate(SPATIAL[R])}}] if R < 3 else ()
    proto, node = _export(model, xs[0], tmp_path / "m.onnx", dynamo, dynamic, opset_version=19)
    _check_attrs(node, R, groups=2, offset_groups=3)
    assert len(node.input) == (5 if v2 else 4 if bias else 3)
    assert (node.input[3] == "") == (v2 and not bias)  # empty optional bias before the mask
    if R < 3:
        _check_runs(tmp_path / "m.onnx", model, xs)
    else:
        with torch.no_grad():
            _check_shape_inference(proto, model(*xs[0]).shape)


@needs_symbolic
@pytest.mark.parametrize("R", R_ALL)
def test_dynamo_export_bfloat16_needs_opset_22(tmp_path, R):
    """DeformConv accepts bfloat16 from opset 22. onnxruntime's CPU provider has no bfloat16
    Conv/DeformConv kernels, so the model is validated with the full ONNX checker only."""
    model = _layer(R, "DeformConv{R}dPack", 4, 4, 3, padding=1, dtype=torch.bfloat16).eval()
    x = torch.randn(2, 4, *SIZES[R][0], dtype=torch.bfloat16)
    proto, _ = _export(model, (x,), tmp_path / "b.onnx", True, opset_version=22)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 22


def test_custom_translation_table_for_older_torch(tmp_path):
    """The route for torch 2.5-2.7: the registered 2-D op, translated by onnxscript."""

    class Raw(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(4, 2, 3, 3))
            self.bias = torch.nn.Parameter(torch.randn(4))

        def forward(self, x, offset):
            return torch.ops.deformconv.deform_conv2d(x, self.weight, offset, None, self.bias,
                                                      2, 1, 0, 1, 1, 1)

    gen = torch.Generator().manual_seed(3)
    model = Raw()
    x, off = torch.randn(2, 4, 7, 6, generator=gen), torch.randn(2, 18, 3, 6, generator=gen)
    table = deformconv.ops.onnx.custom_translation_table()
    _export(model, (x, off), tmp_path / "r.onnx", True, custom_translation_table=table,
            opset_version=19)
    _check_runs(tmp_path / "r.onnx", model, [(x, off)])

