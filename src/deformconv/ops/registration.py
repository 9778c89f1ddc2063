"""Helpers every registered operator shares (``torch.library`` custom ops).

- ``forbid_double_backward(backward_op, name)``: registers on an op's backward op an autograd
  formula that raises a clear error, since the ops have first-order gradients only.
- ``check_not_functorch_autodiff(name, *tensors)``: the public functions call it first;
  ``torch.func``'s autodiff transforms cannot differentiate a custom op (its autograd formula is
  not a functorch-compatible ``autograd.Function``), so it raises one clear error naming the
  op instead of PyTorch's internal ``setup_context`` message. ``torch.func.vmap`` and
  ``functional_call`` still run.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_not_functorch_autodiff(name: str, *tensors) -> None:
    """Raise a RuntimeError naming ``name`` when any of ``tensors`` is being differentiated by a
    ``torch.func`` transform (grad, vjp, jacrev, jacfwd, jvp, hessian). ``None`` and
    non-tensor arguments are ignored; nothing is checked while ``torch.compile`` traces."""
    is_grad = getattr(torch._C._functorch, "is_gradtrackingtensor", None)
    if is_grad is None or torch.compiler.is_compiling():
        return
    if any(isinstance(t, Tensor) and is_grad(t) for t in tensors):
        raise RuntimeError(
            f"{name}: torch.func autodiff transforms (grad, vjp, jacrev, jacfwd, jvp, "
            "hessian) are not supported; use torch.autograd (loss.backward() or "
            "torch.autograd.grad). torch.func.vmap and functional_call work.")


def forbid_double_backward(backward_op, name: str) -> None:
    """Register an autograd formula on ``backward_op`` (a ``torch.library`` custom op) that
    raises a RuntimeError naming ``name``: the ops have first-order gradients only."""
    def no_double_backward(ctx, *grads):
        raise RuntimeError(
            f"{name} supports first-order gradients only: double backward (create_graph=True "
            f"through the backward, e.g. gradient penalties) is not implemented")

    backward_op.register_autograd(no_double_backward,
                                  setup_context=lambda ctx, inputs, output: None)
