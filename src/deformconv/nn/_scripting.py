"""What ``torch.jit.script`` does with the layers: one clear error.

The layers' ``forward`` runs Python that TorchScript's compiler does not take (argument checks
with f-strings, keyword-only and variadic helpers, class-level constants), so scripting them
failed deep in TorchScript's internals. :class:`NotScriptable` (a mixin placed before
``nn.Module`` in every layer's bases) makes ``torch.jit.script`` stop at the first layer it
meets, also inside a larger model, with one error naming the layer and what works instead:
``torch.export`` (the supported path: the ops are ``torch.library`` operators) or
``torch.jit.trace``, whose module saves and loads like a scripted one (``docs/deploy.md``).
"""

from __future__ import annotations


class NotScriptableError(RuntimeError):
    """Raised by ``torch.jit.script`` on a deformconv layer."""


class NotScriptable:
    """Mixin: ``torch.jit.script`` raises :class:`NotScriptableError` with what to use."""

    def __prepare_scriptable__(self):  # called by torch.jit.script on every submodule
        name = type(self).__name__
        raise NotScriptableError(
            f"{name} cannot be compiled by torch.jit.script (its forward runs Python argument "
            f"checks that TorchScript does not compile). Use torch.export.export(model, args) "
            f"(also for ONNX and AOTInductor), or, for a TorchScript pipeline, "
            f"torch.jit.trace(model, example_inputs): the traced module calls the registered "
            f"deformconv operators and saves and loads with torch.jit.save/torch.jit.load "
            f"(import deformconv before loading). See docs/deploy.md.")
