"""process_tree: the Training module's Cancel reaches the interpreter under Slicer's launcher, and ends the whole tree.

The launcher here is a real process that starts the "interpreter" as its child and passes no signal on, as
``PythonSlicer`` (CTK's launcher) does; the interpreter starts a worker of its own (a DataLoader's, a torchrun's).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from SurgicalDepthTrainingLib import process_tree
from SurgicalDepthTrainingLib.process_tree import (cancel_process, child_pids, is_slicer_launcher, kill_process_tree,
                                                   stop_and_wait, stop_command)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals (Windows: taskkill /T /F)")

INTERPRETER = textwrap.dedent("""
    import signal, subprocess, sys, time
    from pathlib import Path
    out = Path(sys.argv[1])
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    def stop(signum, frame):
        out.joinpath("stopped").write_text(signal.Signals(signum).name)
        worker.kill()
        sys.exit(130)
    signal.signal(signal.SIGTERM, stop if sys.argv[2] == "obeys" else signal.SIG_IGN)
    out.joinpath("pids").write_text(f"{worker.pid}")
    time.sleep(120)
""")
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', *sys.argv[1:]]))"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie no reaper collected has ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"))


@pytest.fixture
def started(tmp_path):
    """``start(behaviour)`` -> (launcher, interpreter pid, worker pid), once all three run; whatever is left of them
    is killed after the test (by pid: not with the functions under test)."""
    pids: list[int] = []

    def start(behaviour: str) -> tuple[subprocess.Popen, int, int]:
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, INTERPRETER, str(tmp_path), behaviour],
                                    stdin=subprocess.PIPE)
        pids.append(launcher.pid)
        deadline = time.monotonic() + 60
        while not (tmp_path / "pids").is_file():
            assert time.monotonic() < deadline and launcher.poll() is None
            time.sleep(0.05)
        (interpreter,) = child_pids(launcher.pid)
        pids.extend([interpreter, int((tmp_path / "pids").read_text())])
        return launcher, pids[-2], pids[-1]

    yield start
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def test_stop_reaches_the_interpreter_under_the_launcher(tmp_path, started):
    """Catches a Cancel whose terminate() reached only the launcher (which passes no signal on): the interpreter
    never got SIGTERM, so a training did not save ``last.pt`` and went on holding the GPU. SIGTERM goes to the
    interpreter; it stops cleanly and the launcher ends with its exit code (not killed itself)."""
    launcher, interpreter, worker = started("obeys")
    stop_command(launcher.pid, launcher=True)
    assert launcher.wait(timeout=60) == 130
    assert (tmp_path / "stopped").read_text() == "SIGTERM"
    assert not _alive(interpreter)
    stop_command(0, launcher=True)  # an ended QProcess's pid: must not signal our own process group
    kill_process_tree(0)


def test_kill_ends_the_whole_tree(started):
    """Catches a Cancel whose kill() ended only the launcher: the interpreter (here ignoring SIGTERM, as a hung
    one does) and its worker went on running, orphaned. All three end."""
    launcher, interpreter, worker = started("ignores")
    stop_command(launcher.pid, launcher=True)
    time.sleep(0.5)
    assert _alive(interpreter) and launcher.poll() is None  # ignored, as a hung command would
    kill_process_tree(launcher.pid)
    launcher.wait(timeout=60)
    deadline = time.monotonic() + 30
    while (_alive(interpreter) or _alive(worker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(interpreter) and not _alive(worker)


def test_slicer_launcher_is_told_from_an_interpreter():
    """Catches the Cancel signalling the launcher itself (which passes no signal on) because ``PythonSlicer`` was
    taken for an interpreter, or an interpreter's own workers signalled instead of it."""
    assert is_slicer_launcher("/opt/Slicer-5.8/bin/PythonSlicer")
    assert is_slicer_launcher(r"C:\Users\me\AppData\Local\slicer.org\Slicer 5.8\bin\PythonSlicer.exe")
    assert not is_slicer_launcher(sys.executable) and not is_slicer_launcher("/usr/bin/python3")


class QProcessCalls:
    """The calls cancel_process / stop_and_wait make on a ``qt.QProcess``, over a real launcher process (Qt is not
    here; the processes and signals are real)."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen

    def write(self, data: bytes) -> None:
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    def closeWriteChannel(self) -> None:
        self.popen.stdin.close()

    def state(self) -> int:
        return process_tree.NOT_RUNNING if self.popen.poll() is not None else 2  # QProcess.Running

    def processId(self) -> int:
        return 0 if self.popen.poll() is not None else self.popen.pid

    def program(self) -> str:
        return "/opt/Slicer/bin/PythonSlicer"

    def waitForFinished(self, ms: int) -> bool:
        try:
            self.popen.wait(ms / 1000)
            return True
        except subprocess.TimeoutExpired:
            return False


def _timer(ms: int, callback) -> None:  # qt.QTimer.singleShot
    threading.Timer(ms / 1000, callback).start()


@pytest.mark.parametrize("saving", [False, True])
def test_cancel_waits_longer_for_a_run_that_saves(tmp_path, started, monkeypatch, saving):
    """Catches the Cancel's SIGTERM sent a minute after the stop line although the training had said it stops
    after its current step: for train that SIGTERM is a second signal, which stops at once without saving
    ``last.pt`` (a step or a validation on a CPU can take minutes). It comes after SAVE_GRACE_MS then, and after
    KILL_GRACE_MS otherwise; the whole tree ends KILL_GRACE_MS later if it is ignored."""
    monkeypatch.setattr(process_tree, "KILL_GRACE_MS", 300)
    monkeypatch.setattr(process_tree, "SAVE_GRACE_MS", 2000)
    launcher, interpreter, worker = started("obeys")
    start = time.monotonic()
    cancel_process(QProcessCalls(launcher), lambda: saving, _timer)
    assert launcher.wait(timeout=30) == 130 and (tmp_path / "stopped").read_text() == "SIGTERM"
    took = time.monotonic() - start
    assert (1.9 < took < 10) if saving else (0.25 < took < 1.9), took


def test_cancel_ends_a_tree_that_ignores_it(started, monkeypatch):
    """Catches a Cancel that stopped escalating (a hung command held the GPU and its run folder): the stop line
    and SIGTERM are ignored here, and the launcher, interpreter and worker still all end."""
    monkeypatch.setattr(process_tree, "KILL_GRACE_MS", 300)
    launcher, interpreter, worker = started("ignores")
    cancel_process(QProcessCalls(launcher), lambda: False, _timer)
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 30
    while (_alive(interpreter) or _alive(worker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(interpreter) and not _alive(worker)


def test_stop_and_wait_at_exit_stops_then_ends_the_tree(tmp_path, started):
    """Slicer's exit (no timer fires after its event loop): catches a cleanup that only wrote the stop line, so a
    command that missed it, or hung, ran on after Slicer had gone. One that obeys SIGTERM stops cleanly; one that
    ignores it is killed with its worker."""
    launcher, interpreter, worker = started("obeys")
    stop_and_wait(QProcessCalls(launcher), 200)
    assert launcher.returncode == 130 and (tmp_path / "stopped").read_text() == "SIGTERM"
    (tmp_path / "pids").unlink()
    launcher, interpreter, worker = started("ignores")
    stop_and_wait(QProcessCalls(launcher), 200)
    assert launcher.returncode is not None
    deadline = time.monotonic() + 30  # SIGKILL ends a process when it is next scheduled: on a loaded machine, later
    while (_alive(interpreter) or _alive(worker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(interpreter) and not _alive(worker)
