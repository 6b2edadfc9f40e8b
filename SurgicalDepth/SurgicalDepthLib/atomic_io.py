"""Atomic file and folder writing: write under a temporary name in the target folder, then rename.

A crash, an exception or Ctrl-C while writing never leaves a half-written file (or folder) under the final name.

Permissions: the temporary file is created with mode ``0o666`` and the temporary folder with ``0o777``, and the
operating system takes the process umask (and a folder's default ACL) off, exactly as for a plain ``open(path,
"w")`` or ``os.mkdir(path)``; the rename keeps that mode. The umask is never read or changed here: ``os.umask`` can
only be read by setting it, and setting it, even for a moment, gives the files that other threads create meanwhile
(the background writers of ``predict``, a data loader) the wrong permissions.

Temporary names are ``.<stem>.<8 random characters [a-z0-9_]><suffix>`` (files) and ``.<name>.<8 random
characters>`` (folders) beside the destination, like ``tempfile.mkstemp``/``mkdtemp`` would make them.

A full disk: :func:`report_disk_full` turns the ``OSError`` of a write into :class:`DiskFullError` "disk full while
writing <file>", for writers whose own message names no file (numpy, C++ writers).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"  # tempfile's alphabet
_ATTEMPTS = 100
#: errno values meaning "no room for this file": a full disk, an exhausted quota, a file size limit (RLIMIT_FSIZE,
#: or the file system's largest file)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """No room to write a file (disk full, quota or file size limit); the message names the file."""


@contextlib.contextmanager
def report_disk_full(path: str | os.PathLike):
    """Re-raise a no-space ``OSError`` (disk full, quota, file size limit) inside the block as
    :class:`DiskFullError` "disk full while writing <path> (<reason>)"; other errors pass unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        error = DiskFullError(f"disk full while writing {path} ({os.strerror(exc.errno)})")
        error.errno = exc.errno
        raise error from None


def _create_unique(folder: Path, prefix: str, suffix: str, create: Callable[[Path], None]) -> Path:
    """``create(path)`` for a new random name ``prefix + 8 characters + suffix`` in ``folder``; retried while the
    name exists (``create`` must fail with ``FileExistsError`` for an existing path)."""
    for _ in range(_ATTEMPTS):
        path = folder / f"{prefix}{''.join(secrets.choice(_NAME_CHARS) for _ in range(8))}{suffix}"
        try:
            create(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no unused temporary name {prefix}XXXXXXXX{suffix} in {folder} after {_ATTEMPTS} tries")


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))


def _new_folder(path: Path) -> None:
    os.mkdir(path, 0o777)


def temporary_name_pattern(path: str | os.PathLike) -> re.Pattern:
    """What the names of :func:`atomic_path`'s temporary files for ``path`` (default suffix) match:
    ``.<stem>.`` + 8 random characters + ``<suffix>`` (for finding those a killed writer left behind)."""
    path = Path(path)
    return re.compile(rf"\.{re.escape(path.stem)}\.[{_NAME_CHARS}]{{8}}{re.escape(path.suffix)}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error delete it.

    The temporary file exists (empty) when the block starts; the writer may overwrite or replace it.

    Args:
        path: final destination. Its parent folder must exist.
        suffix: suffix of the temporary file (default: the suffix of ``path``, so writers that dispatch on the
            suffix — VTK, OpenCV — keep working).
    Raises:
        FileNotFoundError: the parent folder of ``path`` does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = _create_unique(path.parent, f".{path.stem}.", path.suffix if suffix is None else suffix, _new_file)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike], suffixes: Sequence[str] | None = None) -> Iterator[list[Path]]:
    """:func:`atomic_path` for files that belong together (an OpenVINO ``.xml`` and its ``.bin``): a temporary path
    beside each (``suffixes``: theirs, default each path's); on success they are renamed in, in order, an existing
    file first moved aside; if a rename fails, the new files placed so far go and the old ones come back. So either
    every new file is in place or none is, and the old set stays whole.

    Raises:
        FileNotFoundError: a parent folder does not exist.
    """
    paths = [Path(p) for p in paths]
    suffixes = [p.suffix for p in paths] if suffixes is None else list(suffixes)
    temps: list[Path] = []
    try:
        for path, suffix in zip(paths, suffixes):
            if not path.parent.is_dir():
                raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
            temps.append(_create_unique(path.parent, f".{path.stem}.", suffix, _new_file))
        yield temps
        _rename_all(temps, paths)
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def _rename_all(temps: list[Path], paths: list[Path]) -> None:
    """Rename each of ``temps`` to its ``paths`` item, all or none (see :func:`atomic_paths`)."""
    placed: list[Path] = []
    asides: list[tuple[Path, Path]] = []
    try:
        for tmp, path in zip(temps, paths):
            if path.exists():
                aside = _create_unique(path.parent, f".{path.name}.old-", "", _new_file)
                os.replace(path, aside)
                asides.append((aside, path))
            os.replace(tmp, path)
            placed.append(path)
    except BaseException:
        for path in placed:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for aside, path in asides:
            os.replace(aside, path)
        raise
    for aside, _ in asides:
        with contextlib.suppress(FileNotFoundError):
            aside.unlink()


def empty_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with nothing in it (what :func:`atomic_dir` takes as absent)."""
    return Path(path).is_dir() and not any(Path(path).iterdir())


def _appeared(path: Path) -> FileExistsError:
    return FileExistsError(f"{path} appeared while it was being written; it was left as it is")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = False,
               replaceable: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success rename it to ``path``, on error delete it (and the
    parent folders it created).

    An existing *empty* folder ``path`` counts as absent (a folder chosen in a file dialog exists already).
    Without ``replace`` nothing at ``path`` is ever touched: a folder or file that appears there while the new one
    is written (another run's, the user's) makes it fail with ``FileExistsError``, and the new one is deleted.
    ``replace``: an existing folder ``path`` is replaced, and only once the new one is complete: it is moved into
    a temporary folder beside it, the new one renamed in, then the old one deleted (moved back if the rename fails).
    A caller checks first that it may go; ``replaceable(path)`` checks again just before it is moved (raising keeps
    it), so that files added to it in the meantime are not lost.

    Raises:
        FileExistsError: ``path`` exists already (without ``replace``), or appeared meanwhile.
    """
    path = Path(path)
    if path.exists() and not replace and not empty_folder(path):
        raise FileExistsError(f"{path} already exists")
    created = [parent for parent in path.parents if not parent.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_unique(path.parent, f".{path.name}.", "", _new_folder)
    try:
        yield tmp
        if empty_folder(path):  # as at the start, or made meanwhile: nothing in it to keep
            path.rmdir()
        if not path.exists():
            _rename_new(tmp, path)
            return
        if not replace:
            raise _appeared(path)
        if replaceable is not None:
            replaceable(path)
        # the old folder goes inside a new one: renaming onto an existing (empty) folder fails on Windows
        aside = _create_unique(path.parent, f".{path.name}.old-", "", _new_folder)
        os.replace(path, aside / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(aside / path.name, path)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # innermost first; one that holds something now stays
            try:
                parent.rmdir()
            except OSError:
                break
        raise


def _rename_new(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``, which must not exist: ``os.rename`` fails on Windows if it does, and on POSIX
    for anything but an empty folder (which has nothing to lose)."""
    try:
        os.rename(tmp, path)
    except OSError:
        if path.exists():
            raise _appeared(path) from None
        raise
