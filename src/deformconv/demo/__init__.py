"""The demo: a plain and a deformable CNN trained on digits under random geometry.

``deformconv demo`` calls ``run`` (``pipeline``); ``data``, ``model``, ``train``, ``figures``
and ``report`` are its parts, and ``figures.visualize_files`` is ``deformconv visualize``.
"""

from .pipeline import DEFAULTS, LARGE, PRESETS, SMALL, demo_test_set, pick_examples, run

__all__ = ["run", "demo_test_set", "pick_examples", "DEFAULTS", "PRESETS", "SMALL", "LARGE"]
