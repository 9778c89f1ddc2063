"""Offline resource report of every shipped Triton kernel: registers, spills, shared memory,
tensor-core instructions, per configuration, dtype and GPU architecture. No GPU needed.

Each kernel is compiled with ``triton.compile`` for a ``GPUTarget`` (the Triton wheel ships
``ptxas``), the PTX is assembled again with ``ptxas -v`` (with the options the installed
Triton passes) to read the register and spill counts, and the PTX is searched for ``wgmma``
(Hopper) or ``mma`` (Ampere-style) instructions. Shared memory is Triton's own figure from the
kernel metadata.

Registration hook: every module of an operator's ``deformconv.ops.<op>.triton`` that defines
``KERNEL_SPECS: list[spec.KernelSpec]`` is reported, each kernel at each of its configurations
and dtypes, with 32-bit indices and, when its constants have an index-width switch
(``spec.INDEX_SWITCHES``), 64-bit ones. A new kernel module needs nothing but that list.

Needs ``TRITON_INTERPRET`` unset (the interpreter replaces the kernels the compiler reads).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import tempfile
from typing import Dict, Iterator, List, Tuple

from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import triton

from .spec import INDEX_SWITCHES, KernelSpec, family

# Report architecture name -> (compute capability, ptxas --gpu-name).
ARCHS: Dict[str, Tuple[int, str]] = {"sm_90a": (90, "sm_90a"), "sm_80": (80, "sm_80")}
COLUMNS = ("kernel", "config", "dtype", "arch", "registers", "spill_bytes", "shared_bytes",
           "tensor_cores")


def kernel_modules() -> List[str]:
    """Every module of every operator's ``triton`` package (``deformconv.ops.<op>.triton``),
    in operator then module-name order."""
    ops = importlib.import_module(__package__.rsplit(".", 1)[0])
    names: List[str] = []
    for op in sorted(pkgutil.iter_modules(ops.__path__), key=lambda m: m.name):
        if not op.ispkg or op.name == "triton":
            continue
        try:
            pkg = importlib.import_module(f"{ops.__name__}.{op.name}.triton")
        except ModuleNotFoundError:
            continue
        names += [f"{pkg.__name__}.{info.name}" for info in
                  sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name)]
    return names


def kernel_specs() -> List[KernelSpec]:
    """``KERNEL_SPECS`` of every module of :func:`kernel_modules`."""
    return [spec for name in kernel_modules()
            for spec in getattr(importlib.import_module(name), "KERNEL_SPECS", ())]


def _config_name(config, index_64: bool) -> str:
    blocks = ",".join(f"{k}={v}" for k, v in config.kwargs.items())
    regs = f"maxnreg={config.maxnreg}," if getattr(config, "maxnreg", None) else ""
    return f"{blocks},warps={config.num_warps},stages={config.num_stages},{regs}" + \
        ("i64" if index_64 else "i32")


def _ptxas(arch: int):
    from triton.backends.nvidia.compiler import get_ptxas  # noqa: PLC0415 (nvidia only)
    try:
        tool = get_ptxas(arch)
    except TypeError:  # older Triton takes no architecture
        tool = get_ptxas()
    return tool.path if hasattr(tool, "path") else tool[0]  # Triton 3.3: (path, version)


@functools.lru_cache(maxsize=None)
def _triton_ptxas_flags() -> Tuple[str, ...]:
    """The register-allocation option the installed Triton passes to ``ptxas`` (Triton 3.9
    passes ``--regAllocOptLevel=2``, Triton 3.6 nothing), so the report's counts are the ones a
    launch of that Triton gets."""
    from triton.backends.nvidia import compiler  # noqa: PLC0415 (nvidia only)
    flag = "--regAllocOptLevel=2"
    return (flag,) if flag in inspect.getsource(compiler.CUDABackend.make_cubin) else ()


def _ptxas_usage(ptx: str, capability: int, gpu_name: str) -> Tuple[int, int]:
    """(registers, spill bytes = spill stores + loads) per thread from ``ptxas -v``."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [_ptxas(capability), "-lineinfo", "-v", *_triton_ptxas_flags(),
               f"--gpu-name={gpu_name}", src, "-o", os.path.join(d, "k.cubin")]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    log = r.stdout + r.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if regs is None or spills is None:
        raise RuntimeError(f"unexpected ptxas output: {log[-500:]}")
    return int(regs.group(1)), int(spills.group(1)) + int(spills.group(2))


def _tensor_cores(ptx: str) -> str:
    return ("wgmma" if re.search(r"\bwgmma\.", ptx) else
            "mma" if re.search(r"\bmma\.sync\.", ptx) else "none")


def compile_row(spec: KernelSpec, config, label: str, arch: str, index_64: bool) -> dict:
    """Compile one kernel at one configuration and return its report row."""
    capability, gpu_name = ARCHS[arch]
    types, consts = spec.signature(label, index_64=index_64)
    consts = dict(consts, **config.kwargs)
    fn = spec.fn
    sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in fn.arg_names}
    constexprs = {(fn.arg_names.index(k),): v for k, v in consts.items()}
    # Triton specialises pointers (16-byte aligned, as PyTorch allocates) and integers that
    # are multiples of 16 at launch; the report assumes both for the spec's channel counts.
    aligned = [n for n, t in sig.items() if t.startswith("*") or n in spec.aligned]
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    if getattr(config, "maxnreg", None):
        options["maxnreg"] = config.maxnreg
    kernel = triton.compile(src, target=GPUTarget("cuda", capability, 32), options=options)
    ptx = kernel.asm["ptx"]
    regs, spill = _ptxas_usage(ptx, capability, gpu_name)
    return dict(kernel=spec.name, config=_config_name(config, index_64), dtype=label, arch=arch,
                registers=regs, spill_bytes=spill, shared_bytes=int(kernel.metadata.shared),
                tensor_cores=_tensor_cores(ptx))


def _jobs(arch: str, kernel: str = "") -> Iterator[Tuple[KernelSpec, object, str, str, bool]]:
    for spec in kernel_specs():
        if kernel not in spec.name:
            continue
        for index_64 in (False, True):
            if index_64 and not set(INDEX_SWITCHES) & set(spec.signature(spec.dtypes[0])[1]):
                continue
            for label in spec.dtypes:
                for config in spec.configs[family(label, index_64)]:
                    yield spec, config, label, arch, index_64


def resource_rows(arch: str = "sm_90a", kernel: str = "") -> List[dict]:
    """One row per kernel x configuration x dtype x index width, for ``arch`` (``ARCHS``);
    only the kernels whose name contains ``kernel`` when given."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("the resource report compiles kernels: unset TRITON_INTERPRET")
    return [compile_row(*job) for job in _jobs(arch, kernel)]


def markdown(rows: List[dict]) -> str:
    """The rows as a Markdown table (``docs/gpu.md``)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)
