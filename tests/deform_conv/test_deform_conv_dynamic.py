"""torch.compile(dynamic=True) without recompiles across sizes; torch.export with a dynamic
batch; an exported program saved and loaded back gives the same outputs."""

import torch
from torch._dynamo.testing import CompileCounterWithBackend

from deformconv import DeformConv2d, ModulatedDeformConv2dPack
from deformconv.ops.deform_conv.reference import deform_conv_ref
from deformconv.ops.geometry import out_size
from deformconv.testing import assert_close

# Batch and image sizes change on every call. Sizes start at 2: dynamo specialises 0 and 1.
SIZES = [(2, 7, 8), (3, 9, 6), (5, 12, 13)]


def _model(gen):
    m = ModulatedDeformConv2dPack(4, 6, 3, stride=(2, 1), padding=1, offset_groups=2)
    with torch.no_grad():
        m.conv_offset.weight.normal_(0, 0.3, generator=gen)
    return m


def test_compile_dynamic_no_recompiles():
    """The offset-predicting layer, forward and backward: one graph for all sizes."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    model = _model(gen)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, dynamic=True, fullgraph=True)
    for n, h, w in SIZES:
        x = torch.randn(n, 4, h, w, generator=gen, requires_grad=True)
        y = compiled(x)
        y.square().sum().backward()
        gx = x.grad
        x.grad = None
        y_eager = model(x)
        y_eager.square().sum().backward()
        torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-4)
    assert counter.frame_count == 1


def test_compile_inductor_dynamic_no_recompiles():
    """The one inductor compile of the suite: the op with given offsets and mask, forward and
    backward, fullgraph (no graph breaks), through inductor's fake-tensor checks of the op's
    shapes and strides; the same outputs and gradients as eager."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(3)
    layer = DeformConv2d(4, 6, 3, stride=(2, 1), padding=1, dilation=(1, 2))
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(layer, backend=counter, dynamic=True, fullgraph=True)
    # No size coincides with another (dynamo's duck sizing would tie them together).
    for n, h, w in [(2, 13, 16), (3, 15, 19), (5, 21, 12)]:
        oh, ow = out_size((h, w), (3, 3), (2, 1), (1, 1), (1, 2))
        args = [torch.randn(n, 4, h, w, generator=gen), 2 * torch.randn(n, 18, oh, ow,
                generator=gen), torch.rand(n, 9, oh, ow, generator=gen)]
        leaves = [a.clone().requires_grad_() for a in args]
        y = compiled(*leaves)
        y.square().sum().backward()
        want = [a.clone().requires_grad_() for a in args]
        y_eager = layer(*want)
        y_eager.square().sum().backward()
        assert_close(y, y_eager, name="output")
        for name, got, ref in zip(("input", "offset", "mask"), leaves, want):
            assert_close(got.grad, ref.grad, name=name)
    assert counter.frame_count == 1


def test_export_dynamic_batch_save_load(tmp_path):
    gen = torch.Generator().manual_seed(1)
    model = _model(gen).eval()
    x = torch.randn(2, 4, 7, 8, generator=gen)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    ops = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert torch.ops.deformconv.deform_conv2d.default in ops  # one node, not decomposed
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    loaded = torch.export.load(str(tmp_path / "m.pt2"))
    for n in (1, 2, 5):
        xs = torch.randn(n, 4, 7, 8, generator=gen)
        want = model(xs)
        torch.testing.assert_close(ep.module()(xs), want, rtol=0, atol=0)
        torch.testing.assert_close(loaded.module()(xs), want, rtol=0, atol=0)


def test_export_explicit_offsets_dynamic_batch_matches_oracle():
    gen = torch.Generator().manual_seed(2)
    layer = DeformConv2d(4, 4, 3, padding=1, groups=2)
    x = torch.randn(2, 4, 5, 6, generator=gen)
    off = 2 * torch.randn(2, 18, 5, 6, generator=gen)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(layer, (x, off), dynamic_shapes=({0: batch}, {0: batch}))
    ops = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert ops == [torch.ops.deformconv.deform_conv2d.default]  # one node, nothing around it
    x3, off3 = torch.randn(3, 4, 5, 6, generator=gen), torch.randn(3, 18, 5, 6, generator=gen)
    want = deform_conv_ref(x3.double(), off3.double(), layer.weight.double(),
                             layer.bias.double(), 1, 1, 1)
    assert_close(ep.module()(x3, off3), want, dtype=torch.float32, name="output")
