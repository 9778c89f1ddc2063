"""Triton kernels and launchers of multi-scale deformable attention."""
