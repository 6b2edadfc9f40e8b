"""process_tree: the Training module's Cancel reaches the interpreter under Slicer's launcher, and ends the whole tree.

The launcher here is a real process that starts the "interpreter" as its child and passes no signal on, as
``PythonSlicer`` (CTK's launcher) does; the interpreter starts a worker of its own (a DataLoader's, a torchrun's).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from SurgicalDepthTrainingLib.process_tree import child_pids, is_slicer_launcher, kill_process_tree, stop_command

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
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, INTERPRETER, str(tmp_path), behaviour])
        pids.append(launcher.pid)
        deadline = time.monotonic() + 60
        while not (tmp_path / "pids").is_file():
            assert time.monotonic() < deadline and launcher.poll() is None
            time.sleep(0.05)
        (interpreter,) = child_pids(launcher.pid)
        pids.extend([interpreter, int((tmp_path / "pids").read_text())])
        return launcher, pids[1], pids[2]

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
