"""Every wrong input gets a ValueError/TypeError naming the argument, expected and given."""

from __future__ import annotations

import pytest
import torch

from deformconv import deform_conv2d


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
