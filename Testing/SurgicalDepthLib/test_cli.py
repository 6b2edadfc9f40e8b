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


def _script(code: str, stdin: str = "") -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (signals and stdin of its own), ``stdin`` written before it starts."""
    return subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, text=True, timeout=60)


def test_a_dropped_interrupt_is_raised_again_and_one_during_clean_up_is_not():
    """Catches: the first signal's KeyboardInterrupt raised where Python drops exceptions (a ``__del__``, a
    callback, an extension module's import: Slicer's Cancel in the first second) and every later signal then
    dismissed as 'already stopping', so the command ran to its end (or until SIGKILL left half-written output);
    and, the other way, a signal during the clean-up of a real interrupt breaking that clean-up off."""
    done = _script("""
import os, signal, sys
from SurgicalDepthLib.cli import _signals_interrupt

class Dropping:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)  # its KeyboardInterrupt is raised here and dropped by Python
        sum(range(1000))

with _signals_interrupt():
    Dropping()
    print("ran on", flush=True)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(1000))
        print("not interrupted", flush=True)
    except KeyboardInterrupt as exc:
        print("interrupted", exc, flush=True)
    try:
        try:
            raise KeyboardInterrupt("first")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # during the clean-up: only said, once
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))
            print("clean-up finished", flush=True)
    except KeyboardInterrupt as exc:
        print("then", exc, flush=True)
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == ["ran on", "interrupted SIGTERM", "clean-up finished", "then first"]
    assert done.stderr.count("already stopping") == 1


def test_a_stop_line_waits_for_a_handler_and_is_repeated_until_taken():
    """Catches: the stop line's SIGTERM raised before the command had installed its handler (the process died of
    the signal's default action: exit -15, no clean-up, no error event); and a stop whose one KeyboardInterrupt was
    dropped being lost, so a cancelled command ran on; a handler the command installed itself (train's: the second
    signal stops at once, without saving) getting more than the one stop."""
    done = _script("""
import os, signal, sys, time
from SurgicalDepthLib.cli import _signals_interrupt, _stop_on_stdin_line

calls = []
def handler(signum, frame):
    calls.append(signum)
    if len(calls) == 1:
        raise KeyboardInterrupt("dropped")  # as if raised inside a __del__: caught below and forgotten

signal.signal(signal.SIGTERM, signal.SIG_DFL)
_stop_on_stdin_line(handler)
time.sleep(0.5)  # the stop line has been read: SIGTERM's default action would have ended the process
print("alive", flush=True)
signal.signal(signal.SIGTERM, handler)
deadline = time.monotonic() + 20
while len(calls) < 2 and time.monotonic() < deadline:
    try:
        time.sleep(0.05)
    except KeyboardInterrupt:
        pass
print("calls", len(calls), flush=True)
others = []
signal.signal(signal.SIGTERM, lambda signum, frame: others.append(signum))  # a command's own (train's)
time.sleep(5)
print("others", len(others), flush=True)
""", stdin="stop\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["alive", "calls", "2", "others", "1"]  # a second would mean 'stop at once


def test_the_out_of_memory_hint_names_only_flags_of_the_command():
    """Catches: one hint, "lower --batch-size or --input-size", for every command: ``synth`` has neither flag (its
    sizes are --frames and --size) and ``stream`` has no --batch-size."""
    from SurgicalDepthLib.cli import MEMORY_FLAGS, memory_hint

    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in subparsers.choices.items():
        flags = {option for action in parser._actions for option in action.option_strings}
        args = build_parser().parse_args([name, *_required_args(parser)])
        named = [flag for flag in MEMORY_FLAGS if flag in memory_hint(args).replace(",", " ").split()]
        assert named == [flag for flag in MEMORY_FLAGS if flag in flags], (name, memory_hint(args))
    assert memory_hint(build_parser().parse_args(["predict", "x.png", "-o", "o"])) == \
        "lower --batch-size or --input-size"
    assert memory_hint(build_parser().parse_args(["synth", "--output", "o"])) == "lower --frames or --size"


def _required_args(parser) -> list[str]:
    """Placeholder values for a sub-command's required positionals and options (parsing only)."""
    out = []
    for action in parser._actions:
        if action.required:
            value = [str(next(iter(action.choices or ["1"])))] * (action.nargs if isinstance(action.nargs, int) else 1)
            out += [*(action.option_strings[:1]), *value]
    return out
