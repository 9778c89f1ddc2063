"""Deformable convolution, 1-, 2- and 3-D: the public functions and their registered ops."""
