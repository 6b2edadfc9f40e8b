"""``--dataset-option KEY=VALUE`` of ``evaluate`` and ``train``: loader options of ``open_dataset`` on the command line
(``depth_scale=0.01`` for a folder of 16-bit PNG depth, ``side=right`` for hamlyn, ...)."""
from __future__ import annotations

import argparse
import math

DATASET_OPTION_HELP = ("a loader option of the dataset (repeatable), e.g. depth_scale=0.01 for a folder of 16-bit PNG "
                       "depth (mm per stored unit), side=right (hamlyn), reference=RGB (servct); numbers, true/false "
                       "and none are converted, anything else is text")
_WORDS = {"true": True, "false": False, "none": None, "null": None}


def dataset_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> ``(key, value)`` (an argparse ``type``): an int, float, bool or None where VALUE reads as one
    (``depth_scale=0.01``, ``require_16bit=false``), else the text (``side=right``)."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. depth_scale=0.01), got {text!r}")
    if raw.lower() in _WORDS:
        return key, _WORDS[raw.lower()]
    for kind in (int, float):
        try:
            value = kind(raw)
        except ValueError:
            continue
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{key}: must be a finite number, got {raw!r}")
        return key, value
    return key, raw


def dataset_options(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """The ``--dataset-option`` pairs as keyword arguments of ``open_dataset``; ValueError when a key is given
    twice."""
    options: dict[str, object] = {}
    for key, value in pairs:
        if key in options:
            raise ValueError(f"--dataset-option {key} is given twice ({options[key]!r} and {value!r})")
        options[key] = value
    return options
