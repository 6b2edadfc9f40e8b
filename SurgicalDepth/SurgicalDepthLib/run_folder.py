"""Output folders that never lose data: a run's manifest, a lock, and no overwriting of files a run did not write.

Every command that writes into a folder opens it as a :class:`RunFolder`:

- the folder is locked while the run writes (``.surgical-depth.lock``: pid, host and process start time); a second
  run into it is refused while the first one lives (a lock left by a dead process on this host, or one whose pid
  another process now has, is taken over);
- the run lists every file it writes in the manifest ``.surgical-depth-run`` (first line a JSON header: command,
  start time; then one relative path per line, appended as the files are claimed, so a killed run is listed too);
- a folder that holds an earlier run's manifest is refused unless ``overwrite=True``, which first deletes exactly the
  files that manifest lists (nothing else);
- a file the run would write that exists and is not the run's own (a user's file, a dataset's ground truth, an
  input) is never overwritten: the run stops before writing it, naming the file;
- a failed run that created the folder and wrote nothing into it removes the folder again.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO

MANIFEST_NAME = ".surgical-depth-run"
LOCK_NAME = ".surgical-depth.lock"
#: commands whose outputs are data sets: ``overwrite`` never deletes them (a data set is nobody's scratch output)
DATASET_COMMANDS = ("synth",)


class OutputConflict(FileExistsError):
    """An output folder or file that this run may not write (printed as one line by the CLI, exit code 2)."""


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (never signals it)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":  # os.kill(pid, 0) would send CTRL_C_EVENT on Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc/PID/stat`` field 22, proc(5)); None
    where that is unknown (another system, no such process). Two processes that share a pid (one reused it after
    the other ended) have different values."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name (field 2) may hold spaces and parentheses
    try:
        return int(fields[19])  # fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def _lock_owner_alive(owner: dict, host: str) -> bool:
    """Whether the run that wrote lock contents ``owner`` (pid, host, process start) may still be writing: it runs
    on another host (unknowable: assumed), or its pid lives here and, where both are known, is the same process
    (a pid reused after a killed run, e.g. after a reboot, is not the lock's owner)."""
    if owner.get("host") != host:
        return True
    try:
        pid = int(owner.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if not _pid_alive(pid):
        return False
    started, now = owner.get("start"), _process_start(pid)
    return started is None or now is None or started == now


def read_manifest(folder: str | os.PathLike) -> tuple[dict, list[str]] | None:
    """``(header, relative paths)`` of the run manifest in ``folder``, or None when there is none."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    return header, [line for line in lines[1:] if line.strip()]


class RunFolder:
    """Context manager guarding one run's writes into ``folder`` (see the module docstring).

    Args:
        folder: output folder (created if missing).
        command: the command name, recorded in the manifest and named in messages.
        inputs: the run's input files and folders: none of them may be an output file, and ``overwrite`` refuses
            (deleting nothing) when an earlier run's output is one of them or lies directly in one of the folders.
        overwrite: replace an earlier run's outputs (the files its manifest lists) instead of refusing.
    """

    def __init__(self, folder: str | os.PathLike, command: str, *, inputs: Iterable[str | os.PathLike] = (),
                 overwrite: bool = False):
        self.folder = Path(folder)
        self.command = command
        self.overwrite = overwrite
        self._inputs = {Path(p).resolve() for p in inputs}
        self._claimed: set[Path] = set()
        self._manifest: IO[str] | None = None
        self._created = False
        self._locked = False
        self._started = False  # this run wrote its own manifest
        self._claim_lock = threading.Lock()  # writer threads claim files too

    # -- entering ------------------------------------------------------------------------------------------------
    def __enter__(self) -> "RunFolder":
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputConflict(f"output {self.folder} exists and is not a folder")
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock()
            self._clear_previous_run()
            self._manifest = open(self.folder / MANIFEST_NAME, "w", encoding="utf-8")
            self._started = True
            header = {"command": self.command, "started": datetime.datetime.now().isoformat(timespec="seconds"),
                      "pid": os.getpid()}
            self._manifest.write(json.dumps(header) + "\n")
            self._manifest.flush()
        except BaseException:
            self._release(failed=True)
            raise
        return self

    def _lock(self) -> None:
        lock = self.folder / LOCK_NAME
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid())}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(lock.read_text())
                except (OSError, json.JSONDecodeError):
                    owner = {}
                owner = owner if isinstance(owner, dict) else {}
                if _lock_owner_alive(owner, me["host"]):
                    raise OutputConflict(f"{self.folder} is being written by another surgical-depth run "
                                         f"(pid {owner.get('pid', '?')} on {owner.get('host', '?')}); wait for it "
                                         "to finish or choose another output folder") from None
                lock.unlink(missing_ok=True)  # left by a run that died: take it over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._locked = True
            return
        raise OutputConflict(f"could not lock {self.folder}: {lock} keeps reappearing")

    def _clear_previous_run(self) -> None:
        previous = read_manifest(self.folder)
        if previous is None:
            return
        header, files = previous
        what = f"an earlier '{header.get('command', '?')}' run ({len(files)} files, started {header.get('started', '?')})"
        if header.get("command") in DATASET_COMMANDS:
            raise OutputConflict(f"{self.folder} is a data set written by {what}; outputs never go into a data "
                                 "set (not even with --overwrite): choose another output folder")
        if not self.overwrite:
            raise OutputConflict(f"{self.folder} holds the outputs of {what}; pass --overwrite to replace them "
                                 "or choose another output folder")
        root = self.folder.resolve()
        doomed = [path for path in ((self.folder / rel).resolve() for rel in files)
                  if root in path.parents]  # never outside the folder
        for path in doomed:  # an input among them: refuse before anything is deleted
            read = next((i for i in self._inputs if i == path or (path.parent == i and i.is_dir())), None)
            if read is not None:
                raise OutputConflict(f"input {read} is (or holds) an output of {what} in {self.folder}, which "
                                     "--overwrite would delete; nothing was deleted: choose another output folder")
        folders = set()
        for path in doomed:
            if path.is_file() or path.is_symlink():
                path.unlink()
                folders.update(p for p in path.parents if root in p.parents)
        for sub in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()  # only when empty
        (self.folder / MANIFEST_NAME).unlink(missing_ok=True)

    # -- writing -------------------------------------------------------------------------------------------------
    def protect(self, inputs: Iterable[str | os.PathLike]) -> None:
        """Add input files found after entering (e.g. the images of an input folder): never outputs."""
        self._inputs.update(Path(p).resolve() for p in inputs)

    def path(self, relative: str | os.PathLike) -> Path:
        """Claim an output file (relative to the folder, or an absolute path inside it) before writing it.

        Raises:
            OutputConflict: the path is an input, lies outside the folder, or exists without being this run's.
        """
        if self._manifest is None:
            raise RuntimeError("RunFolder.path() outside its 'with' block")
        path = self.folder / relative
        resolved = path.resolve()
        root = self.folder.resolve()
        if root not in resolved.parents:
            raise OutputConflict(f"{path} is outside the output folder {self.folder}")
        if resolved in self._inputs:
            raise OutputConflict(f"{path} is an input of this run; outputs never overwrite inputs")
        with self._claim_lock:
            if resolved in self._claimed:
                return path
            if path.exists():
                raise OutputConflict(f"{path} exists and was not written by a surgical-depth run; nothing was "
                                     "overwritten: choose another output folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._claimed.add(resolved)
            self._manifest.write(resolved.relative_to(root).as_posix() + "\n")
            self._manifest.flush()
        return path

    # -- leaving -------------------------------------------------------------------------------------------------
    def _release(self, failed: bool) -> None:
        if self._manifest is not None:
            self._manifest.close()
            self._manifest = None
        if failed and self._started and not any(p.exists() for p in self._claimed):
            # this run wrote nothing (outputs are claimed before they are written): no manifest, no empty folders
            (self.folder / MANIFEST_NAME).unlink(missing_ok=True)
            root = self.folder.resolve()
            parents = {q for p in self._claimed for q in p.parents if root in q.parents}
            for sub in sorted(parents, key=lambda q: len(q.parts), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()  # only when empty
        if self._locked:
            (self.folder / LOCK_NAME).unlink(missing_ok=True)
            self._locked = False
        if failed and self._created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty: a failed run leaves no empty folder

    def __exit__(self, exc_type, exc, tb) -> None:
        self._release(failed=exc_type is not None)
