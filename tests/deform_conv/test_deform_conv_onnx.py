"""ONNX export to the standard ``DeformConv`` node, run in onnxruntime, compared with PyTorch."""

import logging
import warnings

import pytest
import torch

import deformconv
from deformconv import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
needs_symbolic = pytest.mark.skipif(not hasattr(torch.onnx, "ops"),
                                    reason="plain export needs torch.onnx.ops (torch >= 2.8)")


class Explicit(torch.nn.Module):
    """Offsets and mask given as model inputs (torchvision style)."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.conv = DeformConv2d(*args, **kwargs)

    def forward(self, x, offset, mask):
        return self.conv(x, offset, mask)


def _export(model, args, path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), **kwargs)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    return proto


def _deform_nodes(proto):
    nodes = [n for n in proto.graph.node if n.op_type == "DeformConv"]
    assert nodes and all(n.domain == "" for n in nodes)
    opset = {o.domain: o.version for o in proto.opset_import}[""]
    assert opset >= 19
    return nodes


def _check_runs(path, model, inputs_list):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for inputs in inputs_list:
        got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0]
        with torch.no_grad():
            want = model(*inputs)
        assert got.shape == tuple(want.shape)
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-5,
                                   atol=1e-5 * want.abs().max().item())


def _perturb(layer, gen):
    with torch.no_grad():  # offsets of a few pixels, mask away from 0.5
        layer.conv_offset.weight.normal_(0, 0.3, generator=gen)
        layer.conv_offset.bias.normal_(0, 1, generator=gen)
    return layer.eval()


@needs_symbolic
@pytest.mark.parametrize("v2, bias", [(True, False), (False, True)])
def test_dynamo_export_pack_dynamic_shapes(tmp_path, v2, bias):
    gen = torch.Generator().manual_seed(0)
    cls = ModulatedDeformConv2dPack if v2 else DeformConv2dPack
    model = _perturb(cls(6, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                         groups=2, offset_groups=3, bias=bias), gen)
    x = torch.randn(2, 6, 7, 9, generator=gen)
    dims = {0: torch.export.Dim("n"), 2: torch.export.Dim("h", min=4, max=64),
            3: torch.export.Dim("w", min=4, max=64)}
    proto = _export(model, (x,), tmp_path / "m.onnx", dynamo=True, dynamic_shapes=({**dims},))
    (node,) = _deform_nodes(proto)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["group"] == 2 and attrs["offset_group"] == 3
    assert list(attrs["pads"]) == [1, 2, 1, 2] and list(attrs["dilations"]) == [1, 2]
    assert len(node.input) == (5 if v2 else 4 if bias else 3)
    assert (node.input[3] == "") == (v2 and not bias)  # empty optional bias before the mask
    # The exporter writes an IR version that onnxruntime accepts: the file loads as written.
    assert proto.ir_version <= 10
    _check_runs(tmp_path / "m.onnx", model,
                [(x,), (torch.randn(3, 6, 10, 5, generator=gen),),
                 (torch.randn(1, 6, 4, 12, generator=gen),)])


@needs_symbolic
def test_dynamo_export_explicit_offsets_and_mask(tmp_path):
    gen = torch.Generator().manual_seed(1)
    model = Explicit(4, 6, 3, stride=1, padding=1, dilation=2, groups=1).eval()
    x = torch.randn(2, 4, 8, 7, generator=gen)
    off = 3 * torch.randn(2, 2 * 2 * 9, 6, 5, generator=gen)
    mask = torch.rand(2, 2 * 9, 6, 5, generator=gen)
    n = torch.export.Dim("n")
    proto = _export(model, (x, off, mask), tmp_path / "e.onnx", dynamo=True,
                    dynamic_shapes=({0: n}, {0: n}, {0: n}))
    _deform_nodes(proto)
    _check_runs(tmp_path / "e.onnx", model,
                [(x, off, mask), (torch.randn(4, 4, 8, 7, generator=gen),
                                  torch.randn(4, 36, 6, 5, generator=gen),
                                  torch.rand(4, 18, 6, 5, generator=gen))])


@needs_symbolic
def test_dynamo_export_bfloat16_needs_opset_22(tmp_path):
    """DeformConv accepts bfloat16 from opset 22. onnxruntime's CPU provider has no bfloat16
    Conv/DeformConv kernels, so the model is validated with the full ONNX checker only."""
    model = DeformConv2dPack(4, 4, 3, padding=1, dtype=torch.bfloat16).eval()
    x = torch.randn(2, 4, 5, 6, dtype=torch.bfloat16)
    proto = _export(model, (x,), tmp_path / "b.onnx", dynamo=True, opset_version=22)
    onnx.checker.check_model(proto, full_check=True)
    _deform_nodes(proto)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 22


def test_torchscript_export(tmp_path):
    gen = torch.Generator().manual_seed(2)
    model = _perturb(ModulatedDeformConv2dPack(4, 4, 3, padding=1, offset_groups=2,
                                               bias=False), gen)
    x = torch.randn(2, 4, 6, 7, generator=gen)
    proto = _export(model, (x,), tmp_path / "t.onnx", dynamo=False, opset_version=19,
                    input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    (node,) = _deform_nodes(proto)
    assert node.input[3] == ""  # no bias: empty optional input before the mask
    _check_runs(tmp_path / "t.onnx", model, [(x,), (torch.randn(3, 4, 9, 5, generator=gen),)])


def test_custom_translation_table_for_older_torch(tmp_path):
    """The route for torch 2.5-2.7: the registered op, translated by onnxscript."""

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
    proto = _export(model, (x, off), tmp_path / "r.onnx", dynamo=True,
                    custom_translation_table=table, opset_version=19)
    _deform_nodes(proto)
    _check_runs(tmp_path / "r.onnx", model, [(x, off)])
