"""What every operator's Triton kernels share: ``spec`` (what a kernel module declares, the
launcher conventions), ``report`` (the offline resource report) and ``bilinear`` (shared
``@triton.jit`` sampling helpers). Each operator's kernels live in ``ops/<op>/triton/``.
Importing this package imports nothing from Triton."""
