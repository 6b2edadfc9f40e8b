"""Resumable HTTP download of one file: a partial file kept between runs and HTTP range requests (RFC 9110 §14).

:func:`partial_file` keeps the bytes received so far under ``.<name>.<key>.partial`` beside the final file, the key
a digest of the URL, the expected SHA256 and the expected size, so that a partial of another file or of another
version is never resumed into this one. A download that stops for any reason but a verdict on its bytes (Ctrl-C,
SIGTERM, a progress callback that cancels, a connection cut, a timeout) keeps it; the next run asks for the rest
(:func:`transfer`: ``Range: bytes=N-``) and accepts only ``206 Partial Content`` whose ``Content-Range`` starts at
N and covers the rest of a file of the expected size. A server that ignores the range (``200``), answers ``416``
or sends another range gets the whole file written again from byte 0. The caller's SHA256 check of the whole file
stays the final word. Redirects are followed (``urllib``) with the ``Range`` header: Hugging Face's resolve URLs
redirect to a CDN that honours it.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .atomic_io import DiskFullError, report_disk_full

logger = logging.getLogger(__name__)

_BLOCK = 1 << 20
#: Windows: the byte locked to claim a partial file, far past any weights file (a lock there blocks none of its I/O)
_LOCK_OFFSET = 1 << 40
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+)")


class RefusedResponse(ValueError):
    """An answer that is not the file (a web page, another size), refused before any of it was written: the bytes
    of the partial file stay good."""


def partial_pattern(path: str | os.PathLike) -> re.Pattern:
    """What the names of :func:`partial_file`'s partial files of ``path`` match (any URL, digest or size)."""
    return re.compile(rf"\.{re.escape(Path(path).name)}\.[0-9a-f]{{16}}\.partial")


def partial_name(path: str | os.PathLike, url: str, sha256: str, size: int | None) -> Path:
    """The partial file of the download of ``url`` (expected ``sha256``, ``size`` bytes or None) into ``path``."""
    key = hashlib.sha256(f"{url}\n{sha256.lower()}\n{size}".encode()).hexdigest()[:16]
    return Path(path).parent / f".{Path(path).name}.{key}.partial"


def _lock(out: BinaryIO, partial: Path) -> bool:
    """Take an exclusive lock on the open file ``out`` (released when it is closed or the process ends); False when
    another download holds it, or when ``partial`` is no longer the file ``out`` opened (that download finished)."""
    try:
        if os.name == "nt":
            import msvcrt

            out.seek(_LOCK_OFFSET)
            msvcrt.locking(out.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return os.path.samestat(os.fstat(out.fileno()), os.stat(partial))
    except OSError:
        return False


@contextlib.contextmanager
def partial_file(path: Path, partial: Path) -> Iterator[BinaryIO | None]:
    """Yield ``partial`` opened for appending (``"a+b"``: its bytes so far kept) and locked; on success rename it to
    ``path``. On an error it is deleted when it holds nothing or the error judges its bytes (``ValueError``: wrong
    size, type or digest) or the disk is full; on any other (an interrupt, a cancel, a network error) it is kept for
    the next run to resume (also after a :class:`RefusedResponse`: a captive portal's login page says nothing
    about them). Yields None, touching nothing, while another download holds it."""
    out = open(partial, "a+b")
    try:
        locked = _lock(out, partial)
    except BaseException:
        out.close()
        raise
    if not locked:
        out.close()
        yield None
        return
    try:
        yield out
        with report_disk_full(path):
            out.flush()
        if os.name == "nt":  # Windows renames no open file (and other downloads cannot open it meanwhile on POSIX)
            out.close()
        os.replace(partial, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            out.close()  # flushes what was written before the interrupt
        size = partial.stat().st_size if partial.is_file() else 0
        if size == 0 or isinstance(exc, (ValueError, DiskFullError)) and not isinstance(exc, RefusedResponse):
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        else:
            logger.info("kept the %d bytes of %s received so far in %s; downloading it again resumes from there",
                        size, path.name, partial)
        raise
    finally:
        out.close()


def transfer(url: str, out: BinaryIO, *, size: int | None, progress: Callable[[int, int], None] | None,
             timeout: float) -> tuple[str, int]:
    """Write the file at ``url`` into ``out`` (open for appending), resuming after the bytes it holds.

    Args:
        size: the file's expected size in bytes (None: unknown); a partial holding more is started over.
        progress: called as ``progress(bytes_done, bytes_total)`` (total 0 when unknown), first with the bytes
            resumed from (0 when none).
        timeout: seconds without an answer or a byte before ``TimeoutError``.
    Returns:
        SHA256 of the whole file (lowercase hex) and the byte it resumed from (0: downloaded whole).
    Raises:
        RefusedResponse: a web page instead of the file, or a size other than ``size`` (nothing written).
        ValueError: more bytes than ``size``.
        ConnectionError: the connection closed before the announced or expected end (the bytes received stay in
            ``out``).
    """
    start = out.seek(0, os.SEEK_END)
    if size is not None and start > size:
        start = 0
    digest = _hash_prefix(out, start)  # before asking: a server may not wait while 1 GB is hashed
    if size is not None and start == size and start:  # all there (stopped before the rename): only the check left
        if progress is not None:
            progress(start, size)
        return digest.hexdigest(), start
    resp, begin = _open(url, start, size, timeout)
    with resp:
        total = _check_response(url, resp, begin, size)
        if begin != start:  # the server sends the whole file: written again from byte 0
            digest = _hash_prefix(out, 0)
        done = begin
        if progress is not None:
            progress(done, total)
        while block := resp.read(_BLOCK):
            out.write(block)
            digest.update(block)
            done += len(block)
            if progress is not None:
                progress(done, total)
    expected = total or size
    if expected and done < expected:  # http.client returns what it got, without an error, when the connection closes
        raise ConnectionError(f"the server closed the connection after {done} of {expected} bytes")
    if size is not None and done != size:
        raise ValueError(f"downloaded {url}: {done} bytes, but the official file has {size} bytes")
    return digest.hexdigest(), begin


def _hash_prefix(out: BinaryIO, n: int) -> "hashlib._Hash":
    """SHA256 state after the first ``n`` bytes of ``out``, which is cut to them (the rest is appended after)."""
    out.flush()
    out.truncate(n)
    out.seek(0)
    digest = hashlib.sha256()
    left = n
    while left and (block := out.read(min(_BLOCK, left))):
        digest.update(block)
        left -= len(block)
    out.seek(0, os.SEEK_END)
    return digest


def _open(url: str, start: int, size: int | None, timeout: float):
    """The response for the bytes of ``url`` from ``start`` on and the byte it starts at: ``start`` for a valid
    ``206``, else 0 (the server ignored the range, could not satisfy it, or sent another one)."""
    if start:
        request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"})  # carried through redirects
        try:
            resp = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 416:
                raise
            exc.close()
            logger.warning("%s cannot send the bytes from %d on (416); downloading it whole", url, start)
        else:
            if getattr(resp, "status", None) != 206:  # 200: the server ignores Range, sends the whole file (file://)
                logger.info("%s sends the whole file, not the bytes from %d on; downloading it whole", url, start)
                return resp, 0
            problem = _range_problem(resp.headers.get("Content-Range"), start, size)
            if problem is None:
                logger.info("resuming %s at byte %d", url, start)
                return resp, start
            resp.close()
            logger.warning("%s answered the request for bytes %d- with %s; downloading it whole", url, start,
                           problem)
    return urllib.request.urlopen(url, timeout=timeout), 0


def _range_problem(content_range: str | None, start: int, size: int | None) -> str | None:
    """Why a ``206``'s ``Content-Range`` (``bytes FIRST-LAST/TOTAL``) is not the rest of the file from ``start``
    (TOTAL = ``size`` when known); None when it is."""
    match = _CONTENT_RANGE.fullmatch((content_range or "").strip())
    if match is None:
        return f"Content-Range {content_range!r}"
    first, last, total = map(int, match.groups())
    if first != start or last != total - 1 or (size is not None and total != size):
        return f"Content-Range {content_range!r}" + (f" (the file has {size} bytes)" if size is not None else "")
    return None


def _check_response(url: str, resp, begin: int, size: int | None) -> int:
    """The size of the whole file that ``resp`` (its bytes from ``begin`` on) announces (0: unknown); raises
    :class:`RefusedResponse` for a web page or a size other than ``size``."""
    kind = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if kind == "text/html":  # a login, consent or error page instead of the file
        raise RefusedResponse(f"{url} answered with a web page ({kind}), not the weights file; nothing was saved")
    length = resp.headers.get("Content-Length")
    total = begin + int(length) if length else 0
    if size is not None and total and total != size:
        raise RefusedResponse(f"{url} offers {total} bytes, but the official file has {size} bytes; refusing to "
                              "download it")
    return total
