"""Resumable weight downloads (``http_download``): HTTP range requests against a local server, no network."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from SurgicalDepthLib import http_download, weights
from SurgicalDepthLib.weights import WeightSpec

PAYLOAD = bytes(range(256)) * 1200  # 307,200 bytes
NAME = "surgical-depth-tiny"
FILENAME = "depth_anything_v2_vitt.pth"
CUT = 100_000


class RangeServer:
    """A 127.0.0.1 server of ``payload`` at ``/resolve/<FILENAME>``, which redirects (302) to ``/cdn/<FILENAME>`` as
    Hugging Face redirects to its CDN. It honours ``Range: bytes=N-`` (206 + Content-Range, 416 past the end) unless
    told otherwise: ``ignore_range`` (answers 200), ``content_range`` (sends that header instead), ``status_416``;
    ``cuts``: byte counts after which successive answers break the connection off; ``delay``: seconds between
    blocks of 10,000 bytes. ``requests`` records ``(path, Range header)`` of each GET."""

    def __init__(self, payload: bytes = PAYLOAD):
        self.payload, self.cuts, self.requests = payload, [], []
        self.ignore_range, self.content_range, self.status_416, self.delay = False, None, False, 0.0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (http.server API)
                self.close_connection = True
                outer.requests.append((self.path, self.headers.get("Range")))
                if self.path.startswith("/resolve/"):
                    self.send_response(302)
                    self.send_header("Location", self.path.replace("/resolve/", "/cdn/"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                outer.answer(self)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/resolve/{FILENAME}"

    def answer(self, h) -> None:
        n = len(self.payload)
        wanted = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
        start = int(wanted.group(1)) if wanted and not self.ignore_range else 0
        if wanted and not self.ignore_range and (start >= n or self.status_416):  # RFC 9110 §15.5.17
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{n}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        ranged = wanted is not None and not self.ignore_range
        h.send_response(206 if ranged else 200)
        if ranged:
            h.send_header("Content-Range", self.content_range or f"bytes {start}-{n - 1}/{n}")
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(n - start))
        h.end_headers()
        body = self.payload[start:start + self.cuts.pop(0)] if self.cuts else self.payload[start:]
        for i in range(0, len(body), 10_000):
            h.wfile.write(body[i:i + 10_000])
            h.wfile.flush()
            time.sleep(self.delay)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A :class:`RangeServer` with ``NAME`` registered at its URL (pinned digest and size); ``.cache``: the cache."""
    srv = RangeServer()
    srv.thread.start()
    spec = WeightSpec(NAME, srv.url, FILENAME, "Apache-2.0", hashlib.sha256(PAYLOAD).hexdigest(), len(PAYLOAD))
    monkeypatch.setitem(weights.WEIGHTS, NAME, spec)
    monkeypatch.setattr(http_download, "_BLOCK", 10_000)  # several progress calls for a small file
    srv.cache = tmp_path / "cache"
    yield srv
    srv.server.shutdown()
    srv.server.server_close()
    srv.thread.join()


def _partial(cache: Path, spec: WeightSpec | None = None) -> Path:
    spec = spec or weights.WEIGHTS[NAME]
    return http_download.partial_name(cache / FILENAME, spec.url, spec.sha256, spec.size)


def _leave_partial(server, data: bytes) -> Path:
    server.cache.mkdir(exist_ok=True)
    partial = _partial(server.cache)
    partial.write_bytes(data)
    return partial


def _ranges(server) -> list:
    """The Range header of each GET that reached the file (after the redirect)."""
    return [r for path, r in server.requests if path.startswith("/cdn/")]


def test_resume_after_a_connection_cut_mid_body(server):
    """Catches: a download cut off mid-body (network drop) starting again from byte 0 on the next run (its partial
    file deleted): the next run asks the server (through Hugging Face's redirect) for ``bytes=N-`` only, appends
    them, and its progress starts at N."""
    server.cuts = [CUT]
    with pytest.raises(ConnectionError, match=f"closed the connection after {CUT} of {len(PAYLOAD)} bytes"):
        weights.download(NAME, server.cache)
    partial = _partial(server.cache)
    assert not (server.cache / FILENAME).exists() and partial.read_bytes() == PAYLOAD[:CUT]
    seen = []
    path = weights.download(NAME, server.cache, progress=lambda d, t: seen.append((d, t)))
    assert path.read_bytes() == PAYLOAD and not partial.exists()
    assert _ranges(server) == [None, f"bytes={CUT}-"]
    assert seen[0] == (CUT, len(PAYLOAD)) and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert sorted(p.name for p in server.cache.iterdir()) == [FILENAME]


def test_server_ignoring_range_is_written_again_from_zero(server):
    """Catches: a server that ignores Range (200, the whole file) appended after the partial's bytes (a file of
    N + size bytes) instead of written from byte 0."""
    partial = _leave_partial(server, PAYLOAD[:CUT])
    server.ignore_range = True
    seen = []
    path = weights.download(NAME, server.cache, progress=lambda d, t: seen.append(d))
    assert path.read_bytes() == PAYLOAD and not partial.exists()
    assert _ranges(server) == [f"bytes={CUT}-"] and seen[0] == 0


@pytest.mark.parametrize("content_range", [f"bytes {CUT + 1}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}",
                                           f"bytes {CUT}-{len(PAYLOAD)}/{len(PAYLOAD) + 1}",
                                           f"bytes {CUT}-{len(PAYLOAD) - 2}/{len(PAYLOAD)}", "bytes */1", "416"])
def test_wrong_content_range_or_416_starts_over(server, content_range):
    """Catches: a 206 whose Content-Range starts elsewhere than the bytes held, announces another total size, ends
    early or is malformed, or a 416, resumed into the partial file: the whole file is fetched again instead."""
    partial = _leave_partial(server, PAYLOAD[:CUT])
    if content_range == "416":
        server.status_416 = True
    else:
        server.content_range = content_range
    assert weights.download(NAME, server.cache).read_bytes() == PAYLOAD and not partial.exists()
    assert _ranges(server) == [f"bytes={CUT}-", None]


def test_partial_of_another_file_or_version_is_not_resumed(server):
    """Catches: the partial file of another URL, digest or size (another model, a re-published version) resumed
    into this file; the old partial of another version is removed once stale, a recent one left alone."""
    server.cache.mkdir()
    spec = weights.WEIGHTS[NAME]
    others = [_partial(server.cache, dataclasses.replace(spec, **change)) for change in
              ({"url": spec.url + "?v=2"}, {"sha256": "ab" * 32}, {"size": spec.size + 1})]
    for other in others:
        other.write_bytes(b"\0" * CUT)
    assert len({p.name for p in others} | {_partial(server.cache).name}) == 4
    past = time.time() - 2 * weights.STALE_PARTIAL_S
    os.utime(others[0], (past, past))
    path = weights.download(NAME, server.cache)
    assert path.read_bytes() == PAYLOAD and _ranges(server) == [None]
    assert sorted(p.name for p in server.cache.iterdir()) == sorted([FILENAME, others[1].name, others[2].name])


def test_stale_partials_go_when_the_file_is_already_cached(server):
    """Catches the clean-up running only before a download: once the file was cached, the hundreds of MB a killed
    download of it (or of an older version) left stayed forever, since every later call returned the cached copy.
    Stale ones go on a cached call; a recent one, perhaps another download's, stays."""
    path = weights.download(NAME, server.cache)
    stale, recent = _partial(server.cache), server.cache / f".{FILENAME}.{'0' * 16}.partial"
    for partial in (stale, recent):
        partial.write_bytes(PAYLOAD[:CUT])
    past = time.time() - 2 * weights.STALE_PARTIAL_S
    os.utime(stale, (past, past))
    assert weights.download(NAME, server.cache) == path and _ranges(server) == [None]
    assert sorted(p.name for p in server.cache.iterdir()) == sorted([FILENAME, recent.name])


def test_own_partial_is_resumed_however_old(server):
    """Catches: the stale-temporary clean-up deleting this download's own partial file after a night asleep."""
    partial = _leave_partial(server, PAYLOAD[:CUT])
    past = time.time() - 10 * weights.STALE_PARTIAL_S
    os.utime(partial, (past, past))
    assert weights.download(NAME, server.cache).read_bytes() == PAYLOAD
    assert _ranges(server) == [f"bytes={CUT}-"]


def test_sha256_mismatch_after_resume_deletes_the_partial(server, capsys):
    """Catches: a resumed file whose bytes held before were corrupt saved, or kept to be resumed again forever:
    the SHA256 check fails with a one-line error naming the URL, the partial file goes, the next run starts over."""
    from SurgicalDepthLib.cli import main

    partial = _leave_partial(server, b"x" * CUT)
    assert main(["download", NAME, "--cache-dir", str(server.cache), "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"surgical-depth download: error: downloaded {server.url}: SHA256 ")
    assert err.endswith(f"(resumed at byte {CUT}; the partial file was deleted)")
    assert not partial.exists() and not (server.cache / FILENAME).exists()
    assert weights.download(NAME, server.cache).read_bytes() == PAYLOAD
    assert _ranges(server) == [f"bytes={CUT}-", None]


def test_complete_partial_is_checked_without_a_request(server):
    """Catches: a download stopped after its last byte but before the rename fetching the file again (or asking
    for an empty range, 416)."""
    _leave_partial(server, PAYLOAD)
    assert weights.download(NAME, server.cache).read_bytes() == PAYLOAD and server.requests == []


class Cancelled(RuntimeError):
    pass


@pytest.mark.parametrize("stop", [Cancelled, KeyboardInterrupt])
def test_cancel_leaves_a_partial_that_the_next_run_resumes(server, stop):
    """Catches: a cancel from the progress callback (the Slicer module's Cancel) or Ctrl-C deleting the bytes
    received, or leaving anything under the final name: the partial stays, and the next run resumes from it."""
    def progress(done, total):
        if done >= 50_000:
            raise stop("cancelled")
    with pytest.raises(stop):
        weights.download(NAME, server.cache, progress=progress)
    partial = _partial(server.cache)
    held = partial.read_bytes()
    assert len(held) >= 50_000 and held == PAYLOAD[:len(held)] and not (server.cache / FILENAME).exists()
    assert weights.download(NAME, server.cache).read_bytes() == PAYLOAD
    assert _ranges(server) == [None, f"bytes={len(held)}-"]


def test_html_page_on_resume_keeps_the_partial(server):
    """Catches: a hospital network's login page (200 text/html) after a laptop's sleep deleting the bytes already
    received: the page is refused and the partial file stays for the next run."""
    partial = _leave_partial(server, PAYLOAD[:CUT])
    server.answer = lambda h: (h.send_response(200), h.send_header("Content-Type", "text/html"),
                               h.send_header("Content-Length", "6"), h.end_headers(), h.wfile.write(b"log in"))
    with pytest.raises(ValueError, match="answered with a web page"):
        weights.download(NAME, server.cache)
    assert partial.read_bytes() == PAYLOAD[:CUT] and not (server.cache / FILENAME).exists()


def test_second_download_meanwhile_does_not_mix_bytes(server):
    """Catches: two downloads of one file into one cache writing the same partial file: while one holds it, the
    other streams into a temporary file of its own and leaves that partial alone."""
    fcntl = pytest.importorskip("fcntl")
    partial = _leave_partial(server, PAYLOAD[:CUT])
    with open(partial, "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert weights.download(NAME, server.cache).read_bytes() == PAYLOAD
    assert partial.read_bytes() == PAYLOAD[:CUT] and _ranges(server) == [None]


def test_disk_full_on_resume_deletes_the_partial(server, monkeypatch):
    """Catches: a resumed download on a full disk keeping its partial (the space the user must free) or naming
    no file."""
    from full_disk import FullDiskFile

    partial = _leave_partial(server, PAYLOAD[:CUT])
    monkeypatch.setattr(http_download, "open", FullDiskFile, raising=False)
    with pytest.raises(OSError, match=f"disk full while writing {re.escape(str(server.cache / FILENAME))}"):
        weights.download(NAME, server.cache)
    assert not server.cache.exists() or not any(server.cache.iterdir())
    assert not partial.exists()


def test_cli_sigterm_leaves_a_partial_and_jsonl_progress_resumes_there(server, capsys):
    """Catches: SIGTERM (a caller's terminate) of ``surgical-depth download`` losing the bytes received or leaving
    a file under the final name, and the next run's ``--progress jsonl`` starting at 0 instead of the resumed
    byte count."""
    from SurgicalDepthLib.cli import main

    spec = weights.WEIGHTS[NAME]
    server.delay = 0.05  # 31 blocks of 10,000 bytes: about 1.5 s
    script = (f"import sys; from SurgicalDepthLib import http_download, weights; "
              f"from SurgicalDepthLib.cli import main; http_download._BLOCK = 10_000; "
              f"weights.WEIGHTS[{NAME!r}] = weights.WeightSpec({NAME!r}, {spec.url!r}, {FILENAME!r}, 'Apache-2.0', "
              f"{spec.sha256!r}, {spec.size}); "
              f"sys.exit(main(['download', {NAME!r}, '--cache-dir', {str(server.cache)!r}, '--progress', 'jsonl']))")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    partial = _partial(server.cache)
    deadline = time.time() + 60
    while (not partial.is_file() or partial.stat().st_size < 50_000) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    held = partial.stat().st_size
    assert 50_000 <= held < len(PAYLOAD) and not (server.cache / FILENAME).exists()
    assert "Traceback" not in err
    server.delay = 0.0
    assert main(["download", NAME, "--cache-dir", str(server.cache), "--progress", "jsonl"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0] == {"event": "progress", "stage": "download", "step": held, "total": len(PAYLOAD)}
    assert events[-2]["step"] == len(PAYLOAD) and events[-1]["event"] == "done"
    assert (server.cache / FILENAME).read_bytes() == PAYLOAD and _ranges(server)[-1] == f"bytes={held}-"
