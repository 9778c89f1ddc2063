"""Triton kernels (``kernels.py``) and launchers (``launch.py``) of ``dcnv3``; ``dcnv4`` reuses
both."""
