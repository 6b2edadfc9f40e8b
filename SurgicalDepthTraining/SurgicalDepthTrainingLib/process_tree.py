"""Stopping a command that the Training module started, with every process it started in turn.

3D Slicer runs Python commands through its launcher (``PythonSlicer``): a CTK program that starts the real
interpreter as its own child and passes stdin on to it, but no signal. ``QProcess.terminate()`` / ``kill()`` reach
the launcher alone, so the interpreter (and a ``torchrun``'s workers) went on running, holding the GPU and the run
folder, while the panel said "Cancelled". The Training module first writes the stop line on stdin (the command stops
cleanly); when that does not end it, these functions signal the whole tree. No Slicer, Qt or third-party import.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["cancel_process", "cancel_step", "child_pids", "is_slicer_launcher", "kill_process_tree", "stop_and_wait",
           "stop_command"]

#: cancel: after the stop line, SIGTERM to the interpreter once this has passed, the whole tree as long again later
KILL_GRACE_MS = 60_000
#: the same once a training said it stops after its current step (a step or a validation on a CPU can take minutes;
#: a SIGTERM then is a second signal: it stops at once, without saving last.pt)
SAVE_GRACE_MS = 600_000
#: what ``QProcess.state()`` returns for a process that is not running (``QProcess.NotRunning``)
NOT_RUNNING = 0


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid``: from ``/proc`` (Linux), else ``pgrep -P`` (macOS); [] if unknown."""
    proc = Path("/proc")
    if (proc / "self" / "stat").is_file():
        children = []
        for stat in proc.glob("[0-9]*/stat"):
            try:  # "pid (command name) state ppid ...": the name may hold spaces and parentheses
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # the process ended meanwhile
                continue
            if parent == pid:
                children.append(int(stat.parent.name))
        return children
    try:
        found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(word) for word in found.stdout.split() if word.isdigit()]


def is_slicer_launcher(program: str) -> bool:
    """Whether ``program`` is Slicer's Python launcher (``PythonSlicer``, ``PythonSlicer.exe``), which runs the
    interpreter as its child, rather than an interpreter itself."""
    name = program.replace("\\", "/").rsplit("/", 1)[-1].lower()  # either separator, whatever this OS uses
    return name in ("pythonslicer", "pythonslicer.exe")


def stop_command(pid: int, launcher: bool) -> None:
    """SIGTERM to the interpreter that runs the command: ``pid`` itself, or with ``launcher`` (``PythonSlicer``) its
    children. The command stops as on Ctrl-C (``train`` saves ``last.pt``; ``torchrun`` passes the signal on to its
    workers) and the launcher ends with it. Deeper processes are left to their parent: a worker signalled twice would
    stop at once, without saving. Nothing on Windows, where no process can be asked to stop from outside."""
    if sys.platform != "win32" and pid > 0:  # 0 (QProcess.processId() once ended): os.kill(0) is our own group
        for target in child_pids(pid) if launcher else [pid]:
            _send(target, signal.SIGTERM)


def kill_process_tree(pid: int) -> None:
    """End ``pid`` and all its descendants at once: SIGKILL to each, listed first and then killed from the top (a
    parent killed first starts no new child); on Windows ``taskkill /T /F`` (``TerminateProcess`` of the launcher
    alone does not end its children)."""
    if pid <= 0:  # QProcess.processId() of a process that has ended; os.kill(0) would be our own group
        return
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True, check=False)
        return
    for member in _tree(pid):
        _send(member, signal.SIGKILL)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, parents before their children."""
    return [pid, *(member for child in child_pids(pid) for member in _tree(child))]


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):  # ended meanwhile (its pid not reused by one of ours)
        pass


def cancel_step(waited_ms: int, saving: bool) -> tuple[str, int]:
    """What a cancel does next while the process still runs ``waited_ms`` after its stop line: ``("wait", ms)``,
    ``("terminate", ms)`` (SIGTERM to the interpreter, then ask again in ms) or ``("kill", 0)`` (the whole tree).
    ``saving``: the process said it is saving its state (train's ``STOPPING_NOTE`` on stderr): it gets
    :data:`SAVE_GRACE_MS` instead of :data:`KILL_GRACE_MS`. Waits are at most :data:`KILL_GRACE_MS`, so that a
    note that comes later still counts."""
    grace = SAVE_GRACE_MS if saving else KILL_GRACE_MS
    if waited_ms < grace:
        return "wait", min(KILL_GRACE_MS, grace - waited_ms)
    if waited_ms < grace + KILL_GRACE_MS:
        return "terminate", grace + KILL_GRACE_MS - waited_ms
    return "kill", 0


def cancel_process(process: Any, saving: Callable[[], bool], single_shot: Callable[[int, Callable], Any]) -> None:
    """Stop a running ``qt.QProcess`` without blocking: the line ``stop`` on its stdin (the command stops as on
    SIGTERM, a training saving its state; PythonSlicer passes stdin on, not signals), then, while it runs, the steps
    of :func:`cancel_step` (``saving()`` asked at each), each timed with ``single_shot(ms, callback)``
    (``qt.QTimer.singleShot``). ``process`` needs ``write``, ``closeWriteChannel``, ``state``, ``processId`` and
    ``program``, as a QProcess has."""
    process.write(b"stop\n")
    process.closeWriteChannel()

    def escalate(waited_ms: int) -> None:
        if process.state() == NOT_RUNNING:
            return
        action, delay_ms = cancel_step(waited_ms, saving())
        if action == "kill":
            kill_process_tree(process.processId())
            return
        if action == "terminate":
            stop_command(process.processId(), is_slicer_launcher(process.program()))
        single_shot(delay_ms, lambda: escalate(waited_ms + delay_ms))

    escalate(0)


def stop_and_wait(process: Any, timeout_ms: int) -> None:
    """Stop a running ``qt.QProcess`` and wait for it (blocking): the stop line, up to ``timeout_ms`` for it to stop
    on its own, then SIGTERM to the interpreter and the whole tree a few seconds apart. For Slicer's exit, after its
    event loop has ended, where no timer of :func:`cancel_process` would fire. Needs ``waitForFinished`` too."""
    process.write(b"stop\n")
    process.closeWriteChannel()
    if not process.waitForFinished(timeout_ms):
        stop_command(process.processId(), is_slicer_launcher(process.program()))
        if not process.waitForFinished(5000):
            kill_process_tree(process.processId())
            process.waitForFinished(5000)
