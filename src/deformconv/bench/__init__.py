"""Benchmarks: the code behind ``deformconv bench`` (see benchmarks/README.md for the method).

The command line lives in ``deformconv.commands.bench``; this package does not import it.
"""

from __future__ import annotations

from .contenders import CONTENDERS, Problem

__all__ = ["Problem", "CONTENDERS"]
