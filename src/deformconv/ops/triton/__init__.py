"""Triton kernels (``kernels``) and their launchers (``launch``).

Importing this package imports nothing from Triton; import ``launch`` where it is needed.
"""
