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
from pathlib import Path

__all__ = ["child_pids", "is_slicer_launcher", "kill_process_tree", "stop_command"]


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
