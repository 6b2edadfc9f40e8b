"""Sub-commands of ``surgical-depth`` that live in SurgicalDepthTrainingLib (registered via an entry point)."""
from __future__ import annotations

import importlib

_COMMANDS = ("demo", "synth", "train", "evaluate")


def register(subparsers) -> None:
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # a command still being written must not break the others
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.register(subparsers)
