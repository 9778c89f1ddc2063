"""Benchmarks: the code behind ``deformconv bench`` and the timing machinery of every script in
``benchmarks/`` (see benchmarks/README.md for the method).

``timing`` is the one method (alternating contenders, medians, ratios, machine and load),
``contenders`` and ``cpu`` the 2-D CPU benchmark of ``deformconv bench``. The command line
lives in ``deformconv.commands.bench``; this package does not import it.
"""

from __future__ import annotations

from . import timing
from .contenders import CONTENDERS, Problem
from .timing import *  # noqa: F403 (timing.__all__)

__all__ = ["Problem", "CONTENDERS", *timing.__all__]
