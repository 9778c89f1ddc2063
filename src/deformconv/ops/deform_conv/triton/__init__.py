"""Triton kernels of deformable convolution (``kernels``, ``kernels_nd``) and their launchers
(``launch``, ``launch_nd``). Importing this package imports nothing from Triton."""
