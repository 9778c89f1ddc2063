"""The kernel backend setting, checked for the CLI before a command runs into it."""

from __future__ import annotations

from typing import Optional


def backend_setting_error() -> Optional[str]:
    """What is wrong with the kernel backend setting (``DEFORMCONV_BACKEND``), or None."""
    from ..ops import dispatch
    try:
        dispatch.backend()
    except ValueError as e:  # names the variable, the allowed values and the given one
        return str(e)
    return None
