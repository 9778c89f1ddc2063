"""Every wrong argument of ``ms_deform_attn`` is a TypeError/ValueError naming it."""

from __future__ import annotations

import re

import pytest
import torch

from deformconv import ms_deform_attn
from deformconv.ops.ms_deform_attn.reference import make_inputs

ARGS = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
        "attention_weights")


def _base():
    return make_inputs(N=2, Q=3, M=2, D=4, shapes=((3, 4), (2, 2)), P=2, dtype=torch.float32)


BAD = [
    ("value", lambda t: t["value"].numpy(), TypeError, "value must be a Tensor"),
    ("value", lambda t: t["value"].long(), TypeError, "value must be float16"),
    ("value", lambda t: t["value"][0], ValueError, "value must be 4-D"),
    ("value", lambda t: t["value"][:, :-1], ValueError, "value.shape[1] must be the sum"),
    ("spatial_shapes", lambda t: t["spatial_shapes"].float(), TypeError,
     "spatial_shapes must be int64"),
    ("spatial_shapes", lambda t: t["spatial_shapes"].view(-1), ValueError,
     "spatial_shapes must be 2-D"),
    ("spatial_shapes", lambda t: torch.tensor([[3, 4, 1], [2, 2, 1]]), ValueError,
     "spatial_shapes must have shape (L, 2)"),
    ("spatial_shapes", lambda t: torch.tensor([[4, 4], [2, 2]]), ValueError,
     "value.shape[1] must be the sum of H*W over spatial_shapes (20"),
    ("spatial_shapes", lambda t: torch.tensor([[2, 2], [3, 4]]), ValueError,
     "level_start_index must be [0, 4]"),
    ("spatial_shapes", lambda t: torch.tensor([[-3, -4], [2, 2]]), ValueError,
     "spatial_shapes must hold sizes >= 0"),
    ("level_start_index", lambda t: torch.tensor([0, 11]), ValueError,
     "level_start_index must be [0, 12]"),
    ("level_start_index", lambda t: torch.tensor([0]), ValueError,
     "level_start_index must have shape (2,)"),
    ("level_start_index", lambda t: torch.tensor([0.0, 12.0]), TypeError,
     "level_start_index must be int64"),
    ("sampling_locations", lambda t: t["sampling_locations"].double(), TypeError,
     "sampling_locations must have value's dtype"),
    ("sampling_locations", lambda t: t["sampling_locations"][..., :1], ValueError,
     "sampling_locations must have shape (N, Q, M, L, P, 2)"),
    ("sampling_locations", lambda t: t["sampling_locations"][:1], ValueError,
     "sampling_locations must have shape"),
    ("sampling_locations", lambda t: t["sampling_locations"][:, :, :1], ValueError,
     "sampling_locations must have shape"),
    ("sampling_locations", lambda t: t["sampling_locations"][:, :, :, :1], ValueError,
     "sampling_locations must have shape"),
    ("sampling_locations", lambda t: t["sampling_locations"][0], ValueError,
     "sampling_locations must be 6-D"),
    ("attention_weights", lambda t: t["attention_weights"][..., :1], ValueError,
     "attention_weights must have shape (2, 3, 2, 2, 2)"),
    ("attention_weights", lambda t: t["attention_weights"].half(), TypeError,
     "attention_weights must have value's dtype"),
    ("attention_weights", lambda t: 1.0, TypeError, "attention_weights must be a Tensor"),
]


@pytest.mark.parametrize("name,make,error,message", BAD, ids=[f"{b[0]}-{i}"
                                                               for i, b in enumerate(BAD)])
def test_bad_argument(name, make, error, message):
    t = _base()
    t[name] = make(t)
    with pytest.raises(error, match=re.escape(message)):
        ms_deform_attn(*(t[k] for k in ARGS))


def test_bad_im2col_step():
    t = _base()
    with pytest.raises(TypeError, match="im2col_step must be an int"):
        ms_deform_attn(*(t[k] for k in ARGS), im2col_step=2.5)


def test_wrong_device():
    t = _base()
    t["spatial_shapes"] = t["spatial_shapes"].to("meta")
    with pytest.raises(ValueError, match="spatial_shapes must be on value's device"):
        ms_deform_attn(*(t[k] for k in ARGS))


def test_direct_op_call_is_checked_too():
    t = _base()
    t["level_start_index"] = torch.tensor([0, 5])
    with pytest.raises(ValueError, match="level_start_index must be"):
        torch.ops.deformconv.ms_deform_attn(*(t[k] for k in ARGS))
