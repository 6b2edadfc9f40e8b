"""The ``surgical-depth`` parser (``SurgicalDepthLib.cli``): flags shared by the commands that run a model."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from SurgicalDepthLib.cli import BACKEND_CHOICES, PRECISION_CHOICES, build_parser

SHARED = ("model", "input_size", "device", "precision", "backend")


def _actions(command: str) -> dict:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: a for a in subparsers.choices[command]._actions}


def test_model_running_commands_share_flags_defaults_and_help():
    """Catches predict, reconstruct and stream drifting apart on the same flag (reconstruct once offered
    ``--device auto|cpu|cuda|mps`` and a shorter ``--precision`` help than predict)."""
    commands = {name: _actions(name) for name in ("predict", "reconstruct", "stream")}
    for dest in SHARED:
        seen = {(a.default, a.help, tuple(a.choices or ()), a.type) for a in (c[dest] for c in commands.values())}
        assert len(seen) == 1, f"--{dest.replace('_', '-')} differs between commands: {seen}"
    batch = {(c["batch_size"].default, c["batch_size"].help) for n, c in commands.items() if n != "stream"}
    depth_range = {(tuple(c["depth_range"].default), c["depth_range"].help) for n, c in commands.items()
                   if n != "predict"}
    assert len(batch) == 1 and len(depth_range) == 1


def test_written_out_choices_equal_the_loader_registries():
    """Catches a precision or backend added to load_model but not to the CLI (the CLI lists them itself so that
    building the parser does not import torch)."""
    loading = pytest.importorskip("SurgicalDepthLib.loading")
    assert PRECISION_CHOICES == loading.PRECISIONS
    assert BACKEND_CHOICES == loading.BACKENDS


def test_torch_info_lines_stay_off_stderr(tmp_path):
    """Catches: the CLI's INFO logging reaching torch's loggers, so that torch's exit hook printed "FakeTensor cache
    stats" lines after the one-line "interrupted" message (an interrupt during the torch import). A fresh process:
    the CLI's logging set-up is what is tested, not pytest's."""
    code = ("import logging, sys; from SurgicalDepthLib.cli import main; "
            f"main(['synth', '--output', {str(tmp_path / 's')!r}, '--frames', '1', '--size', '28x42', "
            "'--progress', 'none']); "
            "print(logging.getLogger('torch').getEffectiveLevel(), logging.getLogger('SurgicalDepthLib')"
            ".getEffectiveLevel())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == [str(logging.WARNING), str(logging.INFO)]


def test_console_without_the_characters_it_prints(tmp_path):
    """Catches commands that fail on a console whose encoding lacks a character they print: on Windows a redirected
    or piped stdout is cp1252, which has no "→" (in ``predict --help``) and no "Ł" (a path printed when done), so
    ``--help`` raised UnicodeEncodeError and ``synth`` ended with exit 2 after writing its files. Such characters
    are escaped instead; the exit code is the command's own."""
    import os

    env = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    helped = subprocess.run([sys.executable, "-m", "SurgicalDepthLib.cli", "predict", "--help"], env=env,
                            capture_output=True, timeout=120)
    assert helped.returncode == 0, helped.stderr.decode("cp1252", "replace")[-2000:]
    assert b"\\u2192" in helped.stdout  # the arrow, escaped
    out = tmp_path / "Łódź" / "synthetic"
    done = subprocess.run([sys.executable, "-m", "SurgicalDepthLib.cli", "synth", "--output", str(out), "--frames",
                           "1", "--size", "28x42", "--progress", "none"], env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode("cp1252", "replace")[-2000:]
    assert (out / "meta.json").is_file() or any(out.rglob("meta.json"))
