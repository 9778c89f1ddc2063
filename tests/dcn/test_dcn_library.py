"""dcnv3 / dcnv4 as registered operators: checks of bad arguments, opcheck, autocast,
torch.compile, torch.export, the backend switch and fallback, double backward, torch.func."""

from __future__ import annotations

import pytest
import torch

import deformconv
from deformconv.ops.dcnv3.library import dcnv3_backward_op, dcnv3_op
from deformconv.ops.dcnv4.library import dcnv4_backward_op, dcnv4_op
from deformconv.testing import assert_close
from deformconv.testing_dcn import CASES, DCNProblem

P = CASES["default"]  # N=2, 5x6, G=2, Cg=3, 3x3, pad 1: P=9, 54 fused columns -> 56


def _args(p: DCNProblem = P, dtype=torch.float32, requires_grad=False):
    t = p.tensors(dtype, requires_grad=requires_grad)
    return t, (t["input"], t["offset"], t["mask"])


BAD = [  # (argument changes, error, words of the message)
    (dict(kernel_h=0), ValueError, "kernel_h must be >= 1, got 0"),
    (dict(stride_w=0), ValueError, "stride_w must be >= 1"),
    (dict(pad_h=-1), ValueError, "pad_h must be >= 0"),
    (dict(dilation_w=0), ValueError, "dilation_w must be >= 1"),
    (dict(group=0), ValueError, "group must be >= 1"),
    (dict(kernel_w=3.0), TypeError, "kernel_w must be an int, got 3.0"),
    (dict(group=True), TypeError, "group must be an int"),
    (dict(offset_scale="1"), TypeError, "offset_scale must be a float"),
    (dict(offset_scale=float("nan")), ValueError, "offset_scale must be finite"),
    (dict(remove_center=2), TypeError, "remove_center must be a bool"),
    (dict(group_channels=4), ValueError, "group*group_channels = 2*4 = 8"),
    (dict(kernel_h=2, remove_center=True), ValueError, "remove_center needs an odd kernel"),
    (dict(kernel_h=9, pad_h=0), ValueError, "output would be -3x6"),
    (dict(im2col_step=0), ValueError, "im2col_step must be a positive int"),
]
NAMES = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h",
         "dilation_w", "group", "group_channels", "offset_scale", "remove_center")


@pytest.mark.parametrize("op", ["dcnv3", "dcnv4"])
@pytest.mark.parametrize("changes,error,words", BAD)
def test_bad_scalar_arguments(op, changes, error, words):
    t, _ = _args()
    kw = dict(zip(NAMES, P.params()))
    kw.update(changes)
    step = {"im2col_step": kw.pop("im2col_step")} if "im2col_step" in kw else {}
    tensors = (t["input"], t["offset"], t["mask"]) if op == "dcnv3" else \
        (t["input"], t["offset_mask"])
    with pytest.raises(error, match=words.replace("*", r"\*").replace("(", r"\(")):
        getattr(deformconv, op)(*tensors, *kw.values(), **step)


def _bad_tensor_cases():
    t, _ = _args()
    x, off, m = t["input"], t["offset"], t["mask"]
    return [
        ("input", x[0], ValueError, "input must be 4-D"),
        ("input", x.long(), TypeError, "input must be float16, bfloat16, float32 or float64"),
        ("input", [1.0], TypeError, "input must be a Tensor, got list"),
        ("offset", off[..., :-1], ValueError, r"offset must have shape \(N, oH, oW, group\*P\*2\)"),
        ("offset", off[:1], ValueError, "offset must have shape"),
        ("offset", off.double(), TypeError, "offset must have the input's dtype"),
        ("mask", m[:, :-1], ValueError, r"mask must have shape \(N, oH, oW, group\*P\)"),
        ("mask", None, TypeError, "mask must be a Tensor, got NoneType"),
        ("mask", m.to("meta"), ValueError, "mask must be on the input's device"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_bad_tensors_dcnv3(case):
    name, value, error, words = _bad_tensor_cases()[case]
    t, _ = _args()
    args = {"input": t["input"], "offset": t["offset"], "mask": t["mask"]}
    args[name] = value
    with pytest.raises(error, match=words):
        deformconv.dcnv3(*args.values(), *P.params())


@pytest.mark.parametrize("width", [54, 64, 0])
def test_bad_fused_width_dcnv4(width):
    t, _ = _args()
    om = torch.zeros(2, 5, 6, width)
    words = (r"offset_mask must have shape \(N, oH, oW, ceil\(group\*3\*P/8\)\*8\) = "
             r"\(2, 5, 6, 56\), got \(2, 5, 6, " + str(width))
    with pytest.raises(ValueError, match=words):
        deformconv.dcnv4(t["input"], om, *P.params())


def test_opcheck():
    t, args = _args(requires_grad=True)
    torch.library.opcheck(dcnv3_op, (*args, *P.params()))
    torch.library.opcheck(dcnv4_op, (t["input"], t["offset_mask"], *P.params()))
    plain = [a.detach() for a in args]
    torch.library.opcheck(dcnv3_backward_op, (t["grad_out"], *plain, *P.params(), [True, True]))
    torch.library.opcheck(dcnv4_backward_op, (t["grad_out"], plain[0],
                                              t["offset_mask"].detach(), *P.params(),
                                              [False, True]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_policy(dtype):
    """Input in the autocast dtype, offsets and mask float32: output in the autocast dtype,
    offset and mask gradients float32, the input's gradient in its own dtype."""
    t, args = _args(requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        y = deformconv.dcnv3(*args, *P.params())
        y4 = deformconv.dcnv4(t["input"], t["offset_mask"], *P.params())
    assert y.dtype == dtype and y4.dtype == dtype
    gi, go, gm = torch.autograd.grad(y.float(), args, t["grad_out"])
    assert gi.dtype == go.dtype == gm.dtype == torch.float32
    # The same as the op on the input rounded to dtype with float32 positions.
    want = dcnv3_op(t["input"].detach().to(dtype), t["offset"].detach(), t["mask"].detach(),
                    *P.params())
    assert want.dtype == dtype
    assert_close(y, want, dtype)
    with torch.autocast("cpu", dtype=dtype):  # float64 is never cast
        y64 = deformconv.dcnv3(*(a.detach().double() for a in args), *P.params())
    assert y64.dtype == torch.float64


def test_mixed_dtypes_outside_autocast_are_refused():
    t, _ = _args()
    with pytest.raises(TypeError, match="offset must have the input's dtype torch.bfloat16"):
        deformconv.dcnv3(t["input"].bfloat16(), t["offset"], t["mask"], *P.params())


@pytest.mark.slow
def test_torch_compile_fullgraph():
    t, args = _args(requires_grad=True)
    om = t["offset_mask"]

    def f(x, off, m, om):
        return (deformconv.dcnv3(x, off, m, *P.params()).sin()
                + deformconv.dcnv4(x, om, *P.params()))

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    y = compiled(*args, om)
    want = f(*args, om)
    assert_close(y, want, tol=1e-6)
    g = torch.autograd.grad(y, [*args, om], t["grad_out"])
    gw = torch.autograd.grad(want, [*args, om], t["grad_out"])
    for a, b in zip(g, gw):
        assert_close(a, b, tol=1e-6)


@pytest.mark.slow
def test_torch_compile_inductor_dynamic():
    t, args = _args()
    torch._dynamo.reset()
    f = torch.compile(lambda *a: deformconv.dcnv3(*a, *P.params()) * 2, fullgraph=True,
                      dynamic=True)
    assert_close(f(*args), 2 * deformconv.dcnv3(*args, *P.params()), tol=1e-6)


def test_torch_export():
    t, args = _args()

    class M(torch.nn.Module):
        def forward(self, x, off, m, om):
            return deformconv.dcnv3(x, off, m, *P.params()) + deformconv.dcnv4(x, om,
                                                                               *P.params())

    ep = torch.export.export(M(), (*args, t["offset_mask"]))
    text = str(ep.graph)
    assert "deformconv.dcnv3.default" in text and "deformconv.dcnv4.default" in text
    assert_close(ep.module()(*args, t["offset_mask"]), M()(*args, t["offset_mask"]), tol=0)


def test_double_backward_is_refused():
    t, args = _args(dtype=torch.float64, requires_grad=True)
    y = deformconv.dcnv3(*args, *P.params())
    (g,) = torch.autograd.grad(y.sum(), [args[1]], create_graph=True)
    with pytest.raises(RuntimeError, match="dcnv3 supports first-order gradients only"):
        g.sum().backward()


def test_torch_func_autodiff_is_refused():
    t, args = _args(dtype=torch.float64)
    with pytest.raises(RuntimeError, match="dcnv[34]: torch.func autodiff transforms"):
        torch.func.grad(lambda x: deformconv.dcnv3(x, *args[1:], *P.params()).sum())(args[0])
    with pytest.raises(RuntimeError, match="dcnv[34]: torch.func autodiff transforms"):
        torch.func.grad(lambda om: deformconv.dcnv4(args[0], om, *P.params()).sum())(
            t["offset_mask"])


@pytest.mark.parametrize("op", ["dcnv3", "dcnv4"])
def test_fallback_to_torch_when_triton_fails(op, broken_triton):
    t, args = _args(requires_grad=True)
    want = deformconv.dcnv3(*args, *P.params())
    broken_triton(f"{op}_fwd", "no kernel image")
    tensors = args if op == "dcnv3" else (t["input"], t["offset_mask"])
    with pytest.warns(RuntimeWarning, match="no kernel image"):
        y = getattr(deformconv, op)(*tensors, *P.params())
    assert_close(y, want, tol=0)


def test_torch_backend_setting():
    t, args = _args()
    with deformconv.use_backend("torch"):
        y = deformconv.dcnv3(*args, *P.params())
    assert_close(y, deformconv.dcnv3(*args, *P.params()), tol=0)
