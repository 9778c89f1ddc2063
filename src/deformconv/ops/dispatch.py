"""The one place that decides which kernel runs an operator.

The registered ops get their CPU and CUDA kernels through here, so ``torch.compile`` and
``torch.export`` see one opaque node whichever kernel runs. Every operator calls

    ``run(op, direction, fn, torch_module, triton_module, device, dtype, *args)``

which returns ``fn(*args)`` from the Triton launcher module ``triton_module`` (a dotted module
path relative to ``deformconv.ops``, e.g. ``"ms_deform_attn.triton.launch"``) or from
``torch_module`` (a module object holding the pure-PyTorch kernels), by these rules:

1. The backend setting: ``use_backend(...)`` (innermost context) wins over ``set_backend(...)``,
   which wins over the environment variable ``DEFORMCONV_BACKEND``; the default is ``"auto"``.
   ``"torch"`` always runs the pure-PyTorch kernels (any device). ``"auto"`` runs Triton on
   CUDA tensors when ``triton`` imports. ``"triton"`` runs Triton wherever it can run: CUDA
   tensors, and CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``).
2. float64 always runs on the pure-PyTorch path (the Triton kernels ship float16, bfloat16
   and float32).
3. If a Triton kernel fails to compile or launch (an older GPU, an unsupported Triton), the
   call runs on the pure-PyTorch path instead and one warning names the cause; Triton stays
   off for that ``"<op> <direction>"`` (the key of the failure record) for the rest of the
   process.
4. Determinism: ``deterministic()`` is True under ``torch.use_deterministic_algorithms(True)``.
   A Triton launcher module lists in ``NONDETERMINISTIC`` (a tuple of function names) the
   functions whose results depend on the order of atomic additions; under deterministic mode
   those run on ``torch_module`` (the pure-PyTorch kernels scatter by a stably sorted gather,
   bitwise repeatable). Everything else stays on Triton.

Triton is imported on the first call that wants it, never at package import.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import warnings
from typing import Iterator, Optional

import torch

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "DEFORMCONV_BACKEND"
_chosen: Optional[str] = None
_context: contextvars.ContextVar = contextvars.ContextVar("deformconv_backend", default=None)
_failed: dict = {}  # "<op> <direction>" -> the error that turned Triton off


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: Optional[str]) -> None:
    """Choose the kernels of every op for the process: ``"auto"``, ``"triton"`` or
    ``"torch"``; ``None`` returns to the environment variable ``DEFORMCONV_BACKEND``."""
    global _chosen
    _chosen = None if name is None else _check(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the ``with`` block, run every op on backend ``name`` (wins over
    ``set_backend`` and the environment variable)."""
    token = _context.set(_check(name))
    try:
        yield
    finally:
        _context.reset(token)


def backend() -> str:
    """The backend setting in effect: context, then ``set_backend``, then the environment."""
    name = _context.get() or _chosen
    if name is not None:
        return name
    env = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if env not in BACKENDS:
        raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {env!r}")
    return env


def deterministic() -> bool:
    """Whether ``torch.use_deterministic_algorithms(True)`` is in effect: kernels that scatter
    with atomics must then take a deterministic path (module docstring)."""
    return torch.are_deterministic_algorithms_enabled()


def interpreting() -> bool:
    """Whether Triton's interpreter is on (it then runs kernels on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_PROBE = "deform_conv.triton.launch"  # a launcher module: importing it imports Triton


def triton_available() -> bool:
    """Whether Triton imports (the launchers import it)."""
    return not isinstance(_triton_module(_PROBE), ImportError)


def use_triton(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a call on ``device`` with data of ``dtype`` runs the Triton kernels (rules 1
    and 2 of the module docstring)."""
    name = backend()
    if name == "torch" or dtype == torch.float64:
        return False
    if device.type == "cuda":
        return triton_available()
    return name == "triton" and device.type == "cpu" and interpreting() and triton_available()


def describe() -> str:
    """One line for ``deformconv info``: the setting and what it runs on each device."""
    name = backend()
    if not triton_available():
        triton_line = f"triton not importable ({_triton_module(_PROBE)})"
    else:
        import triton  # noqa: PLC0415
        triton_line = f"triton {triton.__version__}"
    cuda = "triton" if use_triton(torch.device("cuda"), torch.float32) else "torch"
    cpu = "triton (interpreter)" if use_triton(torch.device("cpu"), torch.float32) else "torch"
    failed = "".join(f"; triton off for the {d} after: {e}" for d, e in _failed.items())
    return f"backend {name} ({ENV_VAR}={os.environ.get(ENV_VAR, 'unset')}): cuda -> {cuda}, " \
           f"cpu -> {cpu}, float64 -> torch; {triton_line}{failed}"


def _fallback(direction: str, error: Exception) -> None:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        raise error
    first = str(error).strip().splitlines()[:1]
    _failed[direction] = f"{type(error).__name__}: {first[0] if first else ''}"
    warnings.warn(f"deformconv: the Triton {direction} kernel failed ({_failed[direction]}); "
                  f"using the pure-PyTorch kernels for the {direction} from now on",
                  RuntimeWarning, stacklevel=3)


@functools.lru_cache(maxsize=None)
def _triton_module(path: str):
    """``deformconv.ops.<path>`` (e.g. ``"deform_conv.triton.launch_nd"``), or the ImportError
    when Triton (or the module) is missing."""
    import importlib  # noqa: PLC0415

    try:
        return importlib.import_module(f"{__package__}.{path}")
    except ImportError as e:
        return e


def run(op: str, direction: str, fn: str, torch_module, triton_module: str, device: torch.device,
        dtype: torch.dtype, *args):
    """Run ``fn(*args)`` of the kernels the rules above choose for ``op``: from
    ``deformconv.ops.<triton_module>`` (a dotted path such as ``"dcnv3.triton.launch"``) or
    from ``torch_module``. ``direction`` is a free label (``"forward"``, ``"backward"``) that,
    with ``op``, keys the failure record: a Triton failure warns once, and ``"<op>
    <direction>"`` stays on PyTorch for the rest of the process. ``device`` and ``dtype`` are
    those of the data (float64 runs on PyTorch)."""
    key = f"{op} {direction}"
    if key not in _failed and use_triton(device, dtype):
        module = _triton_module(triton_module)
        if not isinstance(module, ImportError) and not (
                deterministic() and fn in getattr(module, "NONDETERMINISTIC", ())):
            try:
                return getattr(module, fn)(*args)
            except Exception as e:  # noqa: BLE001 (any compile or launch failure falls back)
                _fallback(key, e)
    return getattr(torch_module, fn)(*args)
