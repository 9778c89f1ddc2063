"""What a Triton kernel module declares about its kernels, for the launchers and the report.

A kernel module (``kernels.py`` here; the 1-D/3-D and RoI-pooling modules likewise) defines
``KERNEL_SPECS: list[KernelSpec]``, one entry per ``@triton.jit`` kernel. ``report.py`` finds
every module of this package that has the attribute and compiles each kernel at each of its
configurations and dtypes offline; nothing else needs registering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

# Dtype labels of the report: the element type of the data tensors and the tl.dot precision.
# "tf32" is float32 data with TF32 dots.
DTYPES = ("fp32", "tf32", "fp16", "bf16")
ELEMENT = {"fp32": "fp32", "tf32": "fp32", "fp16": "fp16", "bf16": "bf16"}
# The constexpr index-width switch of every kernel: 64-bit address arithmetic.
INDEX_SWITCHES = ("INDEX_64",)
# The one index-width rule of every launcher (``index_64``): 64-bit addresses from tensors of
# this many elements. Half the int32 range: masked lanes of a last tile and address sums
# formed before masking may pass a tensor's end, by less than its size.
INDEX_64_FROM = (2 ** 31 - 1) // 2


def empty(shape, dtype, device):
    """The one allocation of every launcher for the buffers its kernels write completely
    (``torch.empty``). Tests replace this function to fill them with NaN, so a tile a kernel
    forgot fails loudly; product code has no switch for it."""
    import torch  # noqa: PLC0415

    return torch.empty(shape, dtype=dtype, device=device)


def on_device(t):
    """The context every launch runs in: ``torch.cuda.device(t.device)`` for a CUDA tensor,
    nothing for a CPU one (the interpreter)."""
    import contextlib  # noqa: PLC0415

    import torch  # noqa: PLC0415

    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def index_64(*sizes) -> bool:
    """Whether a kernel addressing tensors (or element counts) ``sizes`` needs
    ``INDEX_64=True``: some count reaches ``INDEX_64_FROM``. Registers are the scarce resource
    of the kernels and 64-bit address tiles cost twice as many, so smaller calls stay 32-bit."""
    return any((s if isinstance(s, int) else s.numel()) >= INDEX_64_FROM for s in sizes)


def input_precision(dtype) -> str:
    """The launchers' one TF32 rule: ``tl.dot``'s ``INPUT_PRECISION`` for data of ``dtype``.
    float32 uses TF32 when ``torch.backends.cudnn.allow_tf32`` is True (PyTorch's default, the
    flag ``nn.Conv1d/2d/3d`` follow, so a deformable layer computes like the convolution it
    replaces); everything else is exact ("ieee")."""
    import torch  # noqa: PLC0415 (the report imports this module without needing torch here)

    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


def dot_precision(label: str) -> str:
    """``INPUT_PRECISION`` of ``tl.dot`` for a dtype label."""
    return "tf32" if label == "tf32" else "ieee"


def conv_signature(consts: Dict[str, object], types: Optional[Dict[str, str]] = None):
    """``KernelSpec.signature`` of a deformable convolution kernel: every data pointer of the
    label's element type except those in ``types``, a mask, the label's dot precision, 32- or
    64-bit indices, and ``consts`` (the kernel's taps and flags)."""
    def build(label, index_64=False):
        data = ("x_ptr", "w_ptr", "off_ptr", "mask_ptr", "bias_ptr", "out_ptr", "gout_ptr",
                "goff_ptr", "gmask_ptr")
        return (dict(dict.fromkeys(data, "*" + ELEMENT[label]), **(types or {})),
                dict(HAS_MASK=True, INPUT_PRECISION=dot_precision(label), DOT_UPCAST=False,
                     INDEX_64=index_64, **consts))
    return build


@dataclass(frozen=True)
class KernelSpec:
    """One kernel as the report compiles it.

    Attributes:
        name: the row's ``kernel`` column, e.g. ``"deform_conv2d_fwd"``.
        fn: the ``@triton.jit`` function.
        configs: its shipped ``triton.Config`` lists (the autotune configurations) by dtype
            family: ``"half"`` (float16, bfloat16) and ``"float32"`` (FMA or TF32 dots), and
            the same with ``"_i64"`` for 64-bit indices (``family``).
        signature: ``signature(label) -> (types, constants)``: Triton types of the pointer and
            scalar arguments by name (arguments not named default to ``"i32"``), and the values
            of the constexpr arguments other than the config's block sizes, for a dtype label of
            ``DTYPES``. Index-width switches (``INDEX_64``) belong in ``constants``.
        dtypes: the dtype labels the kernel ships for.
        aligned: integer arguments the report takes as multiples of 16 (channel counts; Triton
            specialises such values at launch, and the memory layout follows from them).
    """

    name: str
    fn: object
    configs: Dict[str, Sequence[object]]
    signature: Callable[[str], Tuple[Dict[str, str], Dict[str, object]]]
    dtypes: Sequence[str] = DTYPES
    aligned: Sequence[str] = ("C", "Cg", "Og", "Cpg", "O")


def family(label_or_dtype, index_64: bool = False) -> str:
    """Config-list key: ``"float32"`` for float32 data (labels fp32/tf32 or
    ``torch.float32``), else ``"half"``; with ``"_i64"`` appended for 64-bit indices."""
    name = "float32" if str(label_or_dtype) in ("fp32", "tf32", "torch.float32") else "half"
    return name + ("_i64" if index_64 else "")
