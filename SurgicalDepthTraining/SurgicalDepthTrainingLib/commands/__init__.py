"""Sub-commands of ``surgical-depth`` that live in SurgicalDepthTrainingLib (registered via an entry point)."""
from __future__ import annotations

import importlib

_COMMANDS = ("demo", "synth", "train", "evaluate")


def register(subparsers) -> None:
    for name in _COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
