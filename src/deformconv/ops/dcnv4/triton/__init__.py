"""Triton launchers of ``dcnv4``: ``dcnv3``'s kernels on the fused offset/mask tensor."""
