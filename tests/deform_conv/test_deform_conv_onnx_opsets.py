"""Dynamo ONNX export: a clear error below opset 19 (every dimensionality), and programs that
were saved and loaded with torch.export export with no translation table."""

import logging
import warnings

import pytest
import torch

import deformconv
from deformconv import DeformConv2dPack, ModulatedDeformConv2dPack
from deformconv.testing import assert_close

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def _export(model, args, path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=True, **kwargs)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [n.op_type for n in proto.graph.node].count("DeformConv") == 1
    assert {o.domain: o.version for o in proto.opset_import}[""] >= 19
    return proto


def _run(path, model, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x)
    assert_close(torch.from_numpy(got), want, name="onnxruntime output")


def _layer(cls=ModulatedDeformConv2dPack):
    torch.manual_seed(0)
    layer = cls(4, 6, 3, padding=1)
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.3)
    return layer.eval()


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("R", [1, 2, 3])
def test_opset_below_19_is_a_clear_error(tmp_path, R, opset):
    # One opset check for every dimensionality: onnxruntime has no DeformConv below opset 19.
    layer = _layer(getattr(deformconv, f"ModulatedDeformConv{R}dPack"))
    with pytest.raises(Exception, match=r"opset 19 or newer") as info:
        _export(layer, (torch.randn(1, 4, *(6,) * R),), tmp_path / "m.onnx",
                opset_version=opset)
    assert f"opset_version={opset}" in str(info.value)


@pytest.mark.parametrize("opset", [19, 21])
def test_opsets_from_19_work(tmp_path, opset):
    layer, x = _layer(), torch.randn(2, 4, 6, 7)
    proto = _export(layer, (x,), tmp_path / "m.onnx", opset_version=opset)
    assert {o.domain: o.version for o in proto.opset_import}[""] == opset
    _run(tmp_path / "m.onnx", layer, x)


@pytest.mark.parametrize("cls", [DeformConv2dPack, ModulatedDeformConv2dPack])
def test_saved_and_loaded_program_exports_without_a_table(tmp_path, cls):
    layer, x = _layer(cls), torch.randn(2, 4, 6, 7)
    program = torch.export.export(layer, (x,), dynamic_shapes=({0: torch.export.Dim("n", max=64)},))
    torch.export.save(program, tmp_path / "p.pt2")
    loaded = torch.export.load(tmp_path / "p.pt2")
    _export(loaded, (), tmp_path / "p.onnx", opset_version=19)
    _run(tmp_path / "p.onnx", layer, x)
    _run(tmp_path / "p.onnx", layer, torch.randn(3, 4, 6, 7))


def test_a_users_own_table_is_kept(tmp_path):
    layer, x = _layer(), torch.randn(1, 4, 5, 5)
    table = deformconv.ops.onnx.custom_translation_table()
    _export(layer, (x,), tmp_path / "t.onnx", opset_version=19, custom_translation_table=table)
    _run(tmp_path / "t.onnx", layer, x)


def test_bfloat16_below_opset_22_is_a_clear_error(tmp_path):
    layer = DeformConv2dPack(4, 4, 3, padding=1, dtype=torch.bfloat16).eval()
    with pytest.raises(Exception, match=r"opset 22"):
        _export(layer, (torch.randn(1, 4, 5, 5, dtype=torch.bfloat16),), tmp_path / "b.onnx",
                opset_version=20)


def test_converted_v2_model_exports(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 4, 3, padding=1)).eval()
    deformconv.convert_to_deformable(net, version=2)
    with torch.no_grad():
        net[2].conv_offset.weight.normal_(0, 0.3)
    x = torch.randn(1, 3, 7, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(tmp_path / "c.onnx"), dynamo=True, opset_version=19)
    proto = onnx.load(str(tmp_path / "c.onnx"))
    onnx.checker.check_model(proto)
    assert [n.op_type for n in proto.graph.node].count("DeformConv") == 2
    _run(tmp_path / "c.onnx", net, x)
