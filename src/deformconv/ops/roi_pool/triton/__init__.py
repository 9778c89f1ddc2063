"""Triton kernels of deformable RoI pooling (``kernels``) and their launcher (``launch``).
Importing this package imports nothing from Triton."""
