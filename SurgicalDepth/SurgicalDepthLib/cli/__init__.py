"""``surgical-depth`` command line: one sub-command per module in this package, plus commands that other
installed packages (``SurgicalDepthTrainingLib``) contribute through the ``surgical_depth.commands`` entry point.

Each command module exposes ``register(subparsers)`` which adds its parser and sets ``func`` (called with the
parsed namespace, returns an exit code). Errors a user can fix (bad paths, shapes, formats) are raised as
``ValueError``/``TypeError``/``FileNotFoundError``/``OSError``/``CliError`` and printed as one line.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib.metadata import entry_points

_CORE_COMMANDS = ("predict", "reconstruct", "download")


class CliError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def input_size_arg(text: str) -> int:
    """argparse type of ``--input-size``: a positive multiple of 14."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 14 or value % 14:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 14, got {value}")
    return value


def build_parser(extra: tuple = ()) -> argparse.ArgumentParser:
    """The full parser. ``extra``: more ``register(subparsers)`` functions (used by ``python -m
    SurgicalDepthTrainingLib``, which works without an installed entry point, e.g. inside 3D Slicer)."""
    parser = argparse.ArgumentParser(
        prog="surgical-depth",
        description="Monocular depth for surgical video (Depth Anything V1/V2) and 3D reconstruction.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _CORE_COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    registrars = list(extra)
    for ep in sorted(entry_points(group="surgical_depth.commands"), key=lambda e: e.name):
        func = ep.load()
        if func not in registrars:
            registrars.append(func)
    for register in registrars:
        register(subparsers)
    return parser


def main(argv: list[str] | None = None, extra: tuple = ()) -> int:
    parser = build_parser(extra)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("surgical-depth: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, TypeError, FileNotFoundError, FileExistsError, OSError) as exc:
        if args.verbose:
            raise
        print(f"surgical-depth {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
