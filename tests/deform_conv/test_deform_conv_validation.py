"""Every wrong input gets a ValueError/TypeError naming the argument, expected and given:
deform_conv2d, then the messages of deform_conv1d/3d (their counts of kernel dimensions)."""

from __future__ import annotations

import pytest
import torch

from deformconv import deform_conv1d, deform_conv2d, deform_conv3d
from deformconv.testing import Problem


def good(**over):
    args = dict(input=torch.randn(2, 4, 6, 6), offset=torch.randn(2, 18, 6, 6),
                weight=torch.randn(8, 4, 3, 3), bias=torch.randn(8), padding=1,
                mask=torch.rand(2, 9, 6, 6))
    args.update(over)
    return args


def test_good_arguments_pass():
    assert deform_conv2d(**good()).shape == (2, 8, 6, 6)


CASES = [
    # (overrides, exception, pattern that must appear in the message)
    (dict(offset=torch.randn(2, 17, 6, 6)), ValueError,
     r"offset channels.*multiple of 2\*kH\*kW = 18.*got 17"),
    (dict(offset=torch.randn(2, 0, 6, 6)), ValueError, r"offset channels.*got 0"),
    (dict(mask=torch.rand(2, 18, 6, 6)), ValueError, r"mask channels.*= 9, got 18"),
    (dict(offset=torch.randn(2, 18, 5, 6)), ValueError,
     r"offset spatial size.*\(6, 6\), got \(5, 6\)"),
    (dict(mask=torch.rand(2, 9, 6, 7)), ValueError, r"mask spatial size.*\(6, 6\), got \(6, 7\)"),
    (dict(offset=torch.randn(3, 18, 6, 6)), ValueError, r"offset batch size.*\(2\), got 3"),
    (dict(mask=torch.rand(1, 9, 6, 6)), ValueError, r"mask batch size.*\(2\), got 1"),
    (dict(weight=torch.randn(8, 3, 3, 3)), ValueError,
     r"input channels \(4\).*weight.shape\[1\] \(3\)"),
    (dict(weight=torch.randn(7, 2, 3, 3)), ValueError, r"weight.shape\[0\] \(7\).*groups \(2"),
    (dict(input=torch.randn(2, 3, 6, 6), weight=torch.randn(8, 3, 3, 3),
          offset=torch.randn(2, 36, 6, 6), mask=None), ValueError,
     r"input channels \(3\).*offset groups \(2"),
    (dict(bias=torch.randn(7)), ValueError, r"bias must have shape \(8,\), got \(7,\)"),
    (dict(stride=0), ValueError, r"stride must be >= 1, got 0"),
    (dict(dilation=(1, 0)), ValueError, r"dilation must be >= 1, got \(1, 0\)"),
    (dict(padding=-1), ValueError, r"padding must be >= 0, got -1"),
    (dict(stride=1.5), TypeError, r"stride must be an int or a pair of ints, got 1.5"),
    (dict(padding=(1, 1, 1)), TypeError, r"padding must be an int or a pair of ints"),
    (dict(input=torch.randn(2, 4, 2, 2), padding=0, offset=torch.randn(2, 18, 1, 1),
          mask=None), ValueError, r"output would be 0x0, smaller than 1x1"),
    (dict(input=torch.randint(0, 3, (2, 4, 6, 6))), TypeError,
     r"input must be float16, bfloat16, float32 or float64, got torch.int64"),
    (dict(offset=torch.randn(2, 18, 6, 6, dtype=torch.float64)), TypeError,
     r"offset must have the input's dtype torch.float32, got torch.float64"),
    (dict(weight=torch.randn(8, 4, 3, 3).half()), TypeError, r"weight must have the input's dtype"),
    (dict(mask=torch.ones(2, 9, 6, 6, dtype=torch.bool)), TypeError,
     r"mask must be float16.*got torch.bool"),
    (dict(input=torch.randn(4, 6, 6)), ValueError, r"input must be 4-D, got shape \(4, 6, 6\)"),
    (dict(bias=torch.randn(8, 1)), ValueError, r"bias must be 1-D"),
    (dict(offset=[1.0]), TypeError, r"offset must be a Tensor, got list"),
    (dict(weight=torch.randn(8, 4, 0, 3)), ValueError, r"weight must have shape .* all sizes >= 1"),
]


@pytest.mark.parametrize("over,exc,pattern", CASES, ids=[c[2][:40] for c in CASES])
def test_bad_input_message(over, exc, pattern):
    with pytest.raises(exc, match=pattern):
        deform_conv2d(**good(**over))


def test_device_mismatch_names_argument():
    meta = torch.randn(2, 18, 6, 6, device="meta")
    with pytest.raises(ValueError, match=r"offset must be on the input's device cpu, got meta"):
        deform_conv2d(**good(offset=meta))


P1 = Problem(N=2, C=4, O=6, size=(9,), kernel=(3,))
P3 = Problem(N=2, C=4, O=4, size=(4, 5, 4), kernel=(3, 3, 2), padding=(1, 1, 0))


def _good3():
    t = P3.tensors()
    return t["input"], t["offset"], t["weight"], t["bias"], t["mask"]


BAD_3D = [
    ("input 4-D", lambda x, o, w, b, m: (x[0], o, w, b, m), ValueError, "input must be 5-D"),
    ("mask groups", lambda x, o, w, b, m: (x, o, w, b, torch.cat([m, m], 1)), ValueError,
     r"mask channels must be offset_groups\*kD\*kH\*kW = 1\*18 = 18, got 36"),
    ("offset channels", lambda x, o, w, b, m: (x, o[:, :-1], w, b, m), ValueError,
     r"offset channels must be a positive multiple of 3\*kD\*kH\*kW = 54, got 53"),
    ("offset size", lambda x, o, w, b, m: (x, o[..., :-1], w, b, m[..., :-1]), ValueError,
     r"offset spatial size must be the output size \(4, 5, 3\), got \(4, 5, 2\)"),
    ("weight groups", lambda x, o, w, b, m: (x, o, w[:, :3], b, m), ValueError,
     r"input channels \(4\) must be a multiple of weight.shape\[1\] \(3\)"),
    ("dtype", lambda x, o, w, b, m: (x, o.float(), w, b, m), TypeError,
     "offset must have the input's dtype torch.float64, got torch.float32"),
    ("bias", lambda x, o, w, b, m: (x, o, w, b[:2], m), ValueError,
     r"bias must have shape \(4,\), got \(2,\)"),
    ("not a tensor", lambda x, o, w, b, m: (x, o.tolist(), w, b, m), TypeError,
     "offset must be a Tensor, got list"),
]


@pytest.mark.parametrize("case", BAD_3D, ids=[c[0] for c in BAD_3D])
def test_bad_input_messages_3d(case):
    _, change, exc, msg = case
    x, o, w, b, m = change(*_good3())
    with pytest.raises(exc, match=msg):
        deform_conv3d(x, o, w, b, padding=(1, 1, 0), mask=m)


def test_bad_parameters_and_1d_messages():
    t = P1.tensors()
    args = (t["input"], t["offset"], t["weight"])
    with pytest.raises(TypeError, match=r"stride must be an int or a tuple of 1 int, got \(1, 1\)"):
        deform_conv1d(*args, stride=(1, 1), padding=1)
    with pytest.raises(ValueError, match="padding must be >= 0, got -1"):
        deform_conv1d(*args, padding=-1)
    with pytest.raises(ValueError, match="output would be -1, smaller than 1: input 1, kernel 3"):
        deform_conv1d(t["input"][..., :1], t["offset"], t["weight"])
    with pytest.raises(ValueError, match=r"mask channels must be offset_groups\*kW = 1\*3 = 3, "
                                         r"got 6"):
        deform_conv1d(*args, padding=1, mask=torch.cat([t["mask"]] * 2, 1))
    with pytest.raises(TypeError, match="dilation must be an int or a tuple of 3 ints"):
        deform_conv3d(*_good3()[:3], dilation=(1, 1))
