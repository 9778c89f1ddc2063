"""The timing machinery every benchmark shares: ``deformconv bench`` and ``benchmarks/*.py``.

One method (benchmarks/README.md): the contenders live in one process, each is warmed up, then
they run once per round in alternating order (reversed every other round, so drift and the
machine's other load hit all alike); a contender's time is its median over the rounds and its
ratio is that median over the median of a floor contender of the same run. Every result
carries the machine (CPU model, widest x86 vector extension, versions, git commit) and the
load average of the minute before the run; a run under load above half the cores is
``provisional``. Peak memory is measured in a fresh process with :func:`peak_extra_bytes`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from statistics import median
from typing import Callable, Dict, Hashable, List, Optional, Tuple

import torch

__all__ = ["machine_info", "load_average", "is_provisional", "time_contenders", "medians",
           "peak_extra_bytes", "write_json"]


def _cpu() -> Tuple[str, str]:
    """The CPU model and its widest x86 vector extension, from ``/proc/cpuinfo`` (Linux)."""
    cpu = platform.processor() or platform.machine()
    vector = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.readlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if "model name" in line)
        flags = set(next(line.split(":", 1)[1].split() for line in lines
                         if line.startswith("flags")))
        # the widest x86 vector extension: CPU kernels' speed differs between them
        vector = ("avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else
                  "avx" if "avx" in flags else "none")
    except (OSError, StopIteration):
        pass
    return cpu, vector


def _commit() -> str:
    """The short commit of the checkout this package runs from, ``-dirty`` with uncommitted
    changes to tracked files; ``unknown`` outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                                capture_output=True, text=True, timeout=5).stdout.strip()
        if not commit:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout
        return commit + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - not installed, or its compiled parts do not load
        return None


def machine_info(device: str = "cpu") -> Dict[str, object]:
    """What every result carries: the device, CPU model (``cpu``), vector extension
    (``vector_isa``), cores, torch's threads, the versions (Python, torch, deformconv;
    onnxruntime and torchvision, ``None`` where they do not import), the platform and the git
    commit. With ``device="cuda"`` also the GPU's name and Triton's version."""
    cpu, vector = _cpu()
    info: Dict[str, object] = {
        "device": device, "cpu": cpu, "vector_isa": vector, "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(),
    }
    for name in ("onnxruntime", "torchvision"):
        info[name] = _version(name)
    from .. import __version__
    info["deformconv"] = __version__
    info["commit"] = _commit()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["triton"] = _version("triton") or "not installed"
    return info


def load_average() -> float:
    """The load average of the last minute (0.0 where the platform has none). Read it before
    the run: the run's own threads would count in it afterwards."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def is_provisional(load: float) -> bool:
    """Whether a run started under ``load`` is provisional: above half the cores."""
    return load > 0.5 * (os.cpu_count() or 1)


def time_contenders(fns: Dict[Hashable, Callable[[], object]], repeats: int, warmup: int,
                    sync: Optional[Callable[[], None]] = None) -> Dict[Hashable, List[float]]:
    """Seconds per call of every contender: ``warmup`` untimed rounds, then ``repeats`` rounds
    in which every contender runs once, in alternating order (reversed every other round).

    ``sync`` (for example ``torch.cuda.synchronize``) runs before and after every timed call,
    so asynchronous devices are timed to completion.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[Hashable, List[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names if r % 2 == 0 else names[::-1]:  # alternate, so drift hits all alike
            sync()
            t0 = time.perf_counter()
            fns[k]()
            sync()
            times[k].append(time.perf_counter() - t0)
    return times


def medians(times: Dict[Hashable, List[float]],
            floor: Hashable) -> Dict[Hashable, Tuple[float, float, float]]:
    """``{contender: (median, minimum, median / median of floor)}`` of :func:`time_contenders`'
    times (seconds)."""
    base = median(times[floor])
    return {k: (median(ts), min(ts), median(ts) / base) for k, ts in times.items()}


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def peak_extra_bytes(fn: Callable[[], object]) -> Tuple[int, object]:
    """``(bytes, result)``: how far one call of ``fn`` raises this process's peak resident size
    above its resident size just before, and what the call returned (Linux only).

    Call it in a fresh process once the inputs exist and the code paths are warm: it resets
    the peak first (``/proc/self/clear_refs``; ``ru_maxrss`` would not do, Linux keeps it
    across fork and exec), then reads ``VmRSS`` before and ``VmHWM`` after the call.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM)
    before = _status("VmRSS:")
    out = fn()
    return _status("VmHWM:") - before, out


def write_json(path: str, result: object) -> None:
    """Write a benchmark's ``result`` as indented JSON to ``path`` (its folder created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
