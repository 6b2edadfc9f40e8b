"""atomic_path / atomic_dir: all or nothing under the final name, umask-based modes, the umask left alone."""
from __future__ import annotations

import os
import re
import stat
import sys
import threading
from pathlib import Path

import pytest

from SurgicalDepthLib.atomic_io import atomic_dir, atomic_path

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_027():
    """Process umask 0o027 for the test (restored afterwards)."""
    previous = os.umask(0o027)
    yield 0o027
    os.umask(previous)


def test_success_renames_and_failure_leaves_nothing(tmp_path):
    with atomic_path(tmp_path / "a.txt") as tmp:
        assert tmp.parent == tmp_path and tmp.is_file() and tmp != tmp_path / "a.txt"
        tmp.write_text("done")
    assert (tmp_path / "a.txt").read_text() == "done"
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "x").write_text("half")
        raise RuntimeError("writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with pytest.raises(FileNotFoundError, match="does not exist"), atomic_path(tmp_path / "missing" / "c.txt"):
        pass


def test_atomic_dir_replaces_a_folder_only_once_the_new_one_is_complete(tmp_path):
    """``replace=True`` (``synth --overwrite``). Catches the old folder deleted before the new one was complete
    (a writer that fails then loses both), a replaced folder left beside the result, and an existing folder
    replaced without being asked to."""
    old = tmp_path / "data"
    old.mkdir()
    (old / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"), atomic_dir(old):
        pass
    with pytest.raises(RuntimeError), atomic_dir(old, replace=True) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"] and (old / "old.txt").read_text() == "old"
    with atomic_dir(old, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (old / "old.txt").is_file()  # still there while the new one is written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert sorted(p.name for p in old.iterdir()) == ["new.txt"]


def test_atomic_dir_never_touches_what_appears_meanwhile_and_takes_an_empty_folder(tmp_path):
    """Catches (synth): a folder that appeared at the output while the data set was written (a second synth run's,
    the user's) moved aside and deleted without ``--overwrite`` (data loss); files added to a replaced data set
    after the caller's check deleted with it; an empty folder (chosen in a file dialog, which must exist) refused;
    an interrupted run leaving the parent folders it created behind."""
    target = tmp_path / "data"
    with pytest.raises(FileExistsError, match="appeared while"), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        target.mkdir()
        (target / "precious.txt").write_text("mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"] and (target / "precious.txt").read_text() == "mine"

    def refuse(folder: Path) -> None:
        if (folder / "precious.txt").exists():
            raise FileExistsError(f"{folder} holds a file no run wrote")

    with pytest.raises(FileExistsError, match="no run wrote"), atomic_dir(target, replace=True,
                                                                          replaceable=refuse) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["precious.txt"]
    empty = tmp_path / "chosen"
    empty.mkdir()
    with atomic_dir(empty) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in empty.iterdir()) == ["new.txt"]
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "a" / "b" / "out") as tmp:
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chosen", "data"]


def test_temporary_names_keep_the_documented_pattern(tmp_path):
    """Catches a changed temporary name: training's stale-temporary clean-up (checkpointing) matches this pattern."""
    with atomic_path(tmp_path / "last.pt") as tmp:
        assert re.fullmatch(r"\.last\.[a-z0-9_]{8}\.pt", tmp.name), tmp.name
    with atomic_path(tmp_path / "clip.seq.nrrd", suffix=".raw") as tmp:
        assert re.fullmatch(r"\.clip\.seq\.[a-z0-9_]{8}\.raw", tmp.name), tmp.name
    with atomic_dir(tmp_path / "seq_0000") as tmp:
        assert re.fullmatch(r"\.seq_0000\.[a-z0-9_]{8}", tmp.name), tmp.name
    assert (tmp_path / "seq_0000").is_dir()


@posix_only
def test_results_get_the_umask_based_mode(tmp_path, umask_027):
    """Catches private results: a file must get 0o666 and a folder 0o777 less the umask, like open()/mkdir() give
    (atomic_dir once renamed mkdtemp's 0o700 folder as it was)."""
    with atomic_path(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"x")
    with atomic_dir(tmp_path / "data") as tmp:
        (tmp / "inner.txt").write_text("x")
    assert _mode(tmp_path / "a.bin") == 0o640
    assert _mode(tmp_path / "data") == 0o750


@posix_only
def test_other_threads_never_see_a_changed_umask(tmp_path, umask_027, monkeypatch):
    """Catches the old umask probe (``os.umask(0)``, then back): a file that another thread creates in between gets
    mode 0o666 instead of 0o640. The race is made certain: whenever the umask is set, another thread creates a file
    at that moment, and every such file must still get the process umask's mode."""
    other = tmp_path / "other"
    other.mkdir()
    real_umask = os.umask

    def create_in_thread() -> None:
        def create() -> None:
            path = other / f"{len(list(other.iterdir()))}.txt"
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))

        thread = threading.Thread(target=create)
        thread.start()
        thread.join()

    def umask_with_a_writer_thread(mask: int) -> int:
        previous = real_umask(mask)
        create_in_thread()
        return previous

    monkeypatch.setattr(os, "umask", umask_with_a_writer_thread)
    for i in range(3):
        with atomic_path(tmp_path / f"{i}.npy") as tmp:
            tmp.write_bytes(b"x")
    with atomic_dir(tmp_path / "data") as tmp:
        (tmp / "inner.txt").write_text("x")
    create_in_thread()  # one file in any case, so the check below never passes empty
    modes = {p.name: oct(_mode(p)) for p in other.iterdir()}
    assert modes and set(modes.values()) == {oct(0o640)}, modes
    assert _mode(tmp_path / "0.npy") == 0o640
