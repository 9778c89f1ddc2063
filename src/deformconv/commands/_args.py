"""Argument helpers shared by the subcommands: standard library only (torch imported lazily).

Nothing here imports the rest of deformconv, so any subcommand (and only subcommands) may
import it without a cycle.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable


def _number(kind: Callable[[str], object], ok: Callable[[object], bool],
            what: str) -> Callable[[str], object]:
    """argparse ``type``: ``kind(text)`` where ``ok`` accepts it; the error says ``what`` was
    expected and shows the text given."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")


def check_device(parser: argparse.ArgumentParser, name: str) -> None:
    """``parser.error`` (exit 2) when ``--device name`` asks for a device this machine lacks."""
    import torch
    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except RuntimeError:
        parser.error(f"--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {name} requested but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            parser.error(f"--device {name} requested but only {torch.cuda.device_count()} "
                         f"CUDA device(s) are visible")
    elif dev.type != "cpu":
        parser.error(f"--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")


def make_folder(parser: argparse.ArgumentParser, flag: str, folder: str) -> None:
    """Create ``folder`` (and its parents) now, or ``parser.error`` naming ``flag``."""
    if not folder:
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        parser.error(f"{flag}: cannot create the folder {folder!r} ({e.strerror})")
