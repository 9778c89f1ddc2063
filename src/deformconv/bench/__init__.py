"""Benchmarks: the code behind ``deformconv bench`` and the timing machinery of every script in
``benchmarks/`` (see benchmarks/README.md for the method).

``timing`` is the one method (alternating contenders, medians, ratios, machine and load),
``contenders`` and ``cpu`` the 2-D CPU benchmark of ``deformconv bench``. The command line
lives in ``deformconv.commands.bench``; this package does not import it.
"""

from __future__ import annotations

from .contenders import CONTENDERS, Problem
from .timing import (
    is_provisional,
    load_average,
    machine_info,
    medians,
    peak_extra_bytes,
    time_contenders,
    write_json,
)

__all__ = ["Problem", "CONTENDERS", "machine_info", "load_average", "is_provisional",
           "time_contenders", "medians", "peak_extra_bytes", "write_json"]
