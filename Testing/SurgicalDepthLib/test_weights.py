"""Weight registry, cache and SHA256-checked download (exercised through file:// URLs, no network)."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import re
import threading
import urllib.request
from pathlib import Path

import pytest
import torch

import SurgicalDepthLib as sd
from SurgicalDepthLib import weights
from SurgicalDepthLib.configs import MODEL_CONFIGS
from SurgicalDepthLib.weights import WeightSpec


def test_registry_names_have_configs():
    for name, spec in weights.WEIGHTS.items():
        assert spec.config_name == name and name in MODEL_CONFIGS
        assert spec.url.startswith("https://") and spec.url.endswith(".pth")


def test_every_registry_entry_is_complete():
    """Catches a registry entry that ``download`` could not verify or ``load_model`` could not build: every entry
    has a model config (a metric one with the official max_depth: Hypersim 20 m, VKITTI 80 m), a licence, a pinned
    64-hex SHA256 and byte size, its official file name at the end of its URL, and a cache file name of its own
    (the cache is one flat folder)."""
    names = {Path(spec.filename).name for spec in weights.WEIGHTS.values()}
    assert len(names) == len(weights.WEIGHTS)
    assert weights.REGISTRY_NAMES == tuple(weights.WEIGHTS) and weights.REGISTRY_NAMES[0] == "depth-anything-v2-small"
    for name, spec in weights.WEIGHTS.items():
        config = MODEL_CONFIGS[spec.config_name]
        assert spec.config_name == name
        assert spec.license in ("Apache-2.0", "CC-BY-NC-4.0"), name
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256 or ""), name
        assert isinstance(spec.size, int) and spec.size > 1_000_000, name
        assert spec.url.startswith("https://huggingface.co/") and spec.url.endswith("/resolve/main/" + spec.filename)
        if "-metric-" in name:
            dataset, size = name.split("-")[-2:]
            encoder = {"small": "vits", "base": "vitb", "large": "vitl"}[size]
            assert spec.filename == f"depth_anything_v2_metric_{dataset}_{encoder}.pth", name
            assert (config.head, config.max_depth, config.encoder) == \
                ("metric", {"hypersim": 20.0, "vkitti": 80.0}[dataset], encoder), name


def test_metric_base_and_large_checkpoints_are_pinned():
    """Catches the official metric Base/Large checkpoints missing from the registry (``surgical-depth download``
    and ``sd.load_model`` knew only the Small ones), or pinned to values other than the ones two independent public
    sources agree on: digests in datamarkin/mozo tools/fetch/depth_anything_v2.py and capsuleutkarsh-design/
    UTVFX_AI_VFX_Suit first_setup.py, sizes in that first_setup.py and pySLAM's scripts/install_extra.sh. Their
    licence is the Base/Large models' CC-BY-NC-4.0 (official README), so ``download`` says non-commercial."""
    expected = {
        "depth-anything-v2-metric-hypersim-base": (
            "depth-anything/Depth-Anything-V2-Metric-Hypersim-Base", "depth_anything_v2_metric_hypersim_vitb.pth",
            "9dc9e274c5eff55c6daf27b660c0ced0eca4e8593a6da90cdcb04d2b4d3f3fa2", 389_965_138),
        "depth-anything-v2-metric-hypersim-large": (
            "depth-anything/Depth-Anything-V2-Metric-Hypersim-Large", "depth_anything_v2_metric_hypersim_vitl.pth",
            "6f82ff2bc543ac02ddff4aa31fa363676a8305dd3ccf04e80e2af115a044cb6d", 1_341_401_882),
        "depth-anything-v2-metric-vkitti-base": (
            "depth-anything/Depth-Anything-V2-Metric-VKITTI-Base", "depth_anything_v2_metric_vkitti_vitb.pth",
            "4dad67a7cc10b462bca48e6b8569c762b8eb3c1adada170a3851a6d3ba37bb3e", 389_964_656),
        "depth-anything-v2-metric-vkitti-large": (
            "depth-anything/Depth-Anything-V2-Metric-VKITTI-Large", "depth_anything_v2_metric_vkitti_vitl.pth",
            "239b1054a369e66da2576e9a118d6d7c12d90dc8ebe609579a9a09cd8e05fe38", 1_341_401_064),
    }
    for name, (repo, filename, digest, size) in expected.items():
        spec = weights.WEIGHTS[name]
        assert spec.url == f"https://huggingface.co/{repo}/resolve/main/{filename}"
        assert (spec.filename, spec.sha256, spec.size, spec.license) == (filename, digest, size, "CC-BY-NC-4.0")
    for name in ("depth-anything-v2-metric-hypersim-small", "depth-anything-v2-metric-vkitti-small"):
        assert weights.WEIGHTS[name].license == "Apache-2.0"


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A tiny official-layout checkpoint registered under a test name and served from a file:// URL."""
    model = sd.load_model("random:surgical-depth-tiny", device="cpu")
    src = tmp_path / "depth_anything_v2_vitt.pth"
    sd.save_official(src, model)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    spec = WeightSpec("surgical-depth-tiny", src.as_uri(), "depth_anything_v2_vitt.pth", "Apache-2.0")
    monkeypatch.setitem(weights.WEIGHTS, "surgical-depth-tiny", spec)
    return model, digest, tmp_path / "cache"


def test_download_verifies_sha256_and_loads(served):
    model, digest, cache = served
    seen = []
    path = weights.download("surgical-depth-tiny", cache, sha256=digest, progress=lambda d, t: seen.append(d))
    assert path.is_file() and seen and seen[-1] == path.stat().st_size
    assert weights.cached_path("surgical-depth-tiny", cache) == path
    state, config = sd.load_state_dict_file(path)
    assert config.encoder == "vitt" and config.version == "v2"
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v)


def test_cache_folder_from_the_environment_serves_download_and_load(served, monkeypatch):
    """Catches: weights downloaded into another cache folder that ``sd.load_model(NAME)`` could not find (it
    looked only in ~/.cache): the folder named by $SURGICAL_DEPTH_CACHE is the default of both."""
    _, digest, cache = served
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    path = weights.download("surgical-depth-tiny", sha256=digest)
    assert path.parent == cache and weights.cached_path("surgical-depth-tiny") == path
    monkeypatch.delenv(weights.CACHE_ENV)
    assert weights.cache_dir() != cache


def test_download_rejects_wrong_digest_and_leaves_nothing(served):
    """Catches: a partial file under the final or a temporary name, and the (empty) cache folder the failed
    download made left behind; a cache folder that existed before stays."""
    _, _, cache = served
    with pytest.raises(ValueError, match="does not match the expected"):
        weights.download("surgical-depth-tiny", cache / "new" / "deeper", sha256="0" * 64)
    assert not cache.exists()
    cache.mkdir()
    with pytest.raises(ValueError, match="does not match the expected"):
        weights.download("surgical-depth-tiny", cache, sha256="0" * 64)
    assert cache.is_dir() and not any(cache.iterdir())


def test_download_without_digest_needs_consent(served):
    _, digest, cache = served
    with pytest.raises(ValueError, match="no SHA256 is known"):
        weights.download("surgical-depth-tiny", cache)
    path = weights.download("surgical-depth-tiny", cache, trust_on_first_use=True)
    assert weights.expected_sha256("surgical-depth-tiny", cache) == digest
    path.write_bytes(path.read_bytes()[:-10])  # tampered afterwards
    with pytest.raises(ValueError, match="does not match the expected"):
        weights.cached_path("surgical-depth-tiny", cache)


def test_unknown_name():
    with pytest.raises(ValueError, match="no downloadable weights named 'nope'"):
        weights.download("nope")


# --- pinned digests of the official files ---

def test_pinned_digests_are_well_formed():
    pinned = {name: spec for name, spec in weights.WEIGHTS.items() if spec.sha256 is not None}
    assert pinned, "no official digest is pinned"
    for name, spec in weights.WEIGHTS.items():
        if spec.sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), name
        if spec.size is not None:
            assert spec.sha256 is not None and isinstance(spec.size, int) and spec.size > 0, name
    assert len({spec.sha256 for spec in pinned.values()}) == len(pinned)  # no copy-paste between entries
    # the value named in the issue (LFS pointer of depth_anything_vits14.pth)
    v1s = weights.WEIGHTS["depth-anything-v1-small"]
    assert (v1s.sha256, v1s.size) == ("59afe57cfd9f4284deaf5b753d954723d7136ae842fba3e068ba03537ca1e60e", 99_219_880)


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to download."""
    def urlopen(*args, **kwargs):
        raise AssertionError(f"unexpected download: {args} {kwargs}")
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


@pytest.mark.parametrize("name", sorted(n for n, s in weights.WEIGHTS.items() if s.sha256 is not None))
def test_sha256_differing_from_pinned_is_refused_before_download(name, tmp_path, no_network):
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="differs from the registry digest"):
        weights.download(name, cache, sha256="0" * 64)
    with pytest.raises(ValueError, match="is not a SHA256 digest"):
        weights.download(name, cache, sha256="xyz")
    assert not cache.exists()  # nothing downloaded, not even the cache folder created
    # the pinned value itself (any case, surrounding spaces) passes the check and reaches the download
    with pytest.raises(AssertionError, match="unexpected download"):
        weights.download(name, cache, sha256=f" {weights.WEIGHTS[name].sha256.upper()} ")


def _pin(monkeypatch, name, **changes):
    monkeypatch.setitem(weights.WEIGHTS, name, dataclasses.replace(weights.WEIGHTS[name], **changes))


def test_download_refuses_bytes_not_matching_pinned_digest(served, monkeypatch):
    _, _, cache = served
    _pin(monkeypatch, "surgical-depth-tiny", sha256="ab" * 32)
    with pytest.raises(ValueError, match="does not match the expected " + "ab" * 32):
        weights.download("surgical-depth-tiny", cache)  # no --sha256 needed: the registry's digest applies
    with pytest.raises(ValueError, match="does not match the expected"):
        weights.download("surgical-depth-tiny", cache, trust_on_first_use=True)  # consent cannot override a pin
    assert not cache.exists()  # neither the file, a temporary, a .sha256 sidecar, nor the folder it made


def test_download_refuses_wrong_size_before_hashing(served, monkeypatch):
    _, digest, cache = served
    n = (cache.parent / "depth_anything_v2_vitt.pth").stat().st_size
    _pin(monkeypatch, "surgical-depth-tiny", sha256=digest, size=n + 1)
    with pytest.raises(ValueError, match=f"offers {n} bytes, but the official file has {n + 1} bytes"):
        weights.download("surgical-depth-tiny", cache)
    assert not cache.exists()  # nor the folder the failed download made


def test_download_with_pinned_digest_and_size(served, monkeypatch):
    _, digest, cache = served
    _pin(monkeypatch, "surgical-depth-tiny", sha256=digest)
    path = weights.download("surgical-depth-tiny", cache)  # neither --sha256 nor --trust-on-first-use
    _pin(monkeypatch, "surgical-depth-tiny", sha256=digest, size=path.stat().st_size)
    path = weights.download("surgical-depth-tiny", cache, sha256=digest.upper())
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # pinned: no sidecar recorded
    assert weights.cached_path("surgical-depth-tiny", cache) == path
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="bytes, but the official file has"):
        weights.cached_path("surgical-depth-tiny", cache)


@pytest.fixture
def http_served(tmp_path, monkeypatch):
    """A small file served on 127.0.0.1 without Content-Length (so only the bytes received tell the size)."""
    payload = b"not a checkpoint " * 1000

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/depth_anything_v2_vitt.pth"
    spec = WeightSpec("surgical-depth-tiny", url, "depth_anything_v2_vitt.pth", "Apache-2.0",
                      hashlib.sha256(payload).hexdigest(), len(payload))
    monkeypatch.setitem(weights.WEIGHTS, "surgical-depth-tiny", spec)
    yield payload, tmp_path / "cache"
    server.shutdown()
    server.server_close()
    thread.join()


def test_http_download_checks_pinned_size_and_digest(http_served, monkeypatch):
    payload, cache = http_served
    path = weights.download("surgical-depth-tiny", cache)
    assert path.read_bytes() == payload
    path.unlink()
    _pin(monkeypatch, "surgical-depth-tiny", size=len(payload) - 1)
    with pytest.raises(ValueError, match=f"{len(payload)} bytes, but the official file has {len(payload) - 1}"):
        weights.download("surgical-depth-tiny", cache)
    _pin(monkeypatch, "surgical-depth-tiny", size=len(payload), sha256="cd" * 32)
    with pytest.raises(ValueError, match="does not match the expected"):
        weights.download("surgical-depth-tiny", cache)
    assert cache.is_dir() and not any(cache.iterdir())  # the folder was there before these failed downloads


# --- the download command ---

@pytest.mark.parametrize("mode", ["jsonl", "none"])
def test_cli_download_follows_progress_mode(mode, served, capsys):
    """Catches: ``download`` drawing its own tqdm bar on stderr whatever ``--progress`` says, and emitting no
    progress events (nor a final ``done``) with ``--progress jsonl``."""
    from SurgicalDepthLib.cli import main

    _, digest, cache = served
    assert main(["download", "surgical-depth-tiny", "--cache-dir", str(cache), "--sha256", digest,
                 "--progress", mode]) == 0
    out, err = capsys.readouterr()
    assert not re.search(r"\d+%\||B/s|it/s", err), err  # no tqdm bar
    size = (cache / "depth_anything_v2_vitt.pth").stat().st_size
    if mode == "none":
        saved = cache / "depth_anything_v2_vitt.pth"
        assert out.strip() == f"saved surgical-depth-tiny to {saved} (licence Apache-2.0)"
        return
    events = [json.loads(line) for line in out.splitlines()]  # stdout holds JSON objects only
    progress = [e for e in events[:-1] if e["event"] == "progress"]
    assert len(progress) == len(events) - 1 and {e["stage"] for e in progress} == {"download"}
    assert progress[-1]["step"] == progress[-1]["total"] == size
    assert events[-1] == {"event": "done", "name": "surgical-depth-tiny",
                          "path": str(cache / "depth_anything_v2_vitt.pth"), "license": "Apache-2.0"}


def test_cli_download_errors_name_the_url_and_the_flag(served, tmp_path, monkeypatch, capsys):
    """Catches: an unreachable server reported as "<urlopen error [Errno -2] ...>" (no URL, no model name) and a
    ``--cache-dir`` that is a file reported as "[Errno 17] File exists: ..." (no flag)."""
    import socket

    from SurgicalDepthLib.cli import main

    _, digest, cache = served
    with socket.socket() as s:  # a local port nothing listens on: connection refused, no network needed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/depth_anything_v2_vitt.pth"
    _pin(monkeypatch, "surgical-depth-tiny", url=url)
    args = ["download", "surgical-depth-tiny", "--sha256", digest, "--progress", "none"]
    assert main([*args, "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"surgical-depth download: error: download surgical-depth-tiny: cannot reach {url} (")
    assert not cache.exists()
    blocking = tmp_path / "good.png"
    blocking.write_bytes(b"png")
    for folder, says in [(blocking, "is a file"), (blocking / "sub", f"lies under the file {blocking}")]:
        assert main([*args, "--cache-dir", str(folder)]) == 2
        assert capsys.readouterr().err.strip() == f"surgical-depth download: error: --cache-dir {folder} {says}; " \
                                                  "give a folder"


def test_cli_download_states_the_licence(served, monkeypatch, capsys):
    """Catches: ``download`` never telling the user the licence of what it saved (V2-Base/Large are CC-BY-NC-4.0,
    non-commercial): neither its help nor its output nor the jsonl ``done`` event named it."""
    from SurgicalDepthLib.cli import build_parser, main

    _, digest, cache = served
    _pin(monkeypatch, "surgical-depth-tiny", license="CC-BY-NC-4.0")
    assert main(["download", "surgical-depth-tiny", "--cache-dir", str(cache), "--sha256", digest,
                 "--progress", "none"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith("(licence CC-BY-NC-4.0: non-commercial use only)"), out
    download_help = build_parser()._subparsers._group_actions[0].choices["download"].format_help()
    download_help = re.sub(r"\s+", "", download_help)  # argparse wraps lines at hyphens too
    assert "depth-anything-v2-baseCC-BY-NC-4.0" in download_help
    assert "depth-anything-v2-smallApache-2.0" in download_help


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """A 127.0.0.1 server answering each GET with ``behave(handler)``; returns ``serve(behave, **spec changes)``,
    which registers "surgical-depth-tiny" at its URL (no digest, no size unless given) and returns the cache path."""
    behaviour = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            behaviour["behave"](self)
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(behave, **changes):
        behaviour["behave"] = behave
        url = f"http://127.0.0.1:{server.server_address[1]}/depth_anything_v2_vitt.pth"
        spec = dataclasses.replace(WeightSpec("surgical-depth-tiny", url, "depth_anything_v2_vitt.pth", "Apache-2.0"),
                                   **changes)
        monkeypatch.setitem(weights.WEIGHTS, "surgical-depth-tiny", spec)
        return tmp_path / "cache"

    yield serve
    server.shutdown()
    server.server_close()
    thread.join()


def _send(handler, body: bytes, *, length: int | None = None, kind: str = "application/octet-stream",
          chunked: bool = False) -> None:
    handler.protocol_version = "HTTP/1.1"
    handler.send_response(200)
    handler.send_header("Content-Type", kind)
    if chunked:
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(b"%x\r\n" % (2 * len(body)) + body)  # a chunk announced twice as long, then the end
    else:
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        handler.end_headers()
        handler.wfile.write(body)


def test_body_shorter_than_content_length_is_not_saved(http_server, capsys):
    """Catches: a connection closed before the Content-Length was reached (http.client returns the bytes it got,
    without an error) saved under the final name and its digest recorded as trusted (--trust-on-first-use)."""
    from SurgicalDepthLib.cli import main

    cache = http_server(lambda h: _send(h, b"w" * 2000, length=5000))
    with pytest.raises(ConnectionError, match="closed the connection after 2000 of 5000 bytes"):
        weights.download("surgical-depth-tiny", cache, trust_on_first_use=True)
    assert not cache.exists()
    assert main(["download", "surgical-depth-tiny", "--cache-dir", str(cache), "--trust-on-first-use",
                 "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("surgical-depth download: error: download surgical-depth-tiny: http://127.0.0.1:")
    assert "broke off (the server closed the connection after 2000 of 5000 bytes)" in err[-1]
    assert not cache.exists()


def test_broken_http_response_is_a_one_line_error(http_server, capsys):
    """Catches: a chunked body cut off mid-chunk (http.client.IncompleteRead, not an OSError) or a garbled status
    line (BadStatusLine) ending ``surgical-depth download`` in a traceback instead of a one-line error, exit 2."""
    from SurgicalDepthLib.cli import main

    for behave in (lambda h: _send(h, b"w" * 1000, chunked=True), lambda h: h.wfile.write(b"garbage\r\n\r\n")):
        digest = "ab" * 32
        cache = http_server(behave)
        assert main(["download", "surgical-depth-tiny", "--cache-dir", str(cache), "--sha256", digest,
                     "--progress", "none"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "broke off (broken HTTP response: " in err[-1] and "run the command again" in err[-1], err
        assert not cache.exists()


def test_html_page_instead_of_weights_is_refused(http_server):
    """Catches: a login / error web page answered with status 200 (text/html) saved as the weights file and, with
    --trust-on-first-use, its digest recorded as the one every later load accepts."""
    cache = http_server(lambda h: _send(h, b"<html><body>Sign in</body></html>", kind="text/html"))
    with pytest.raises(ValueError, match=r"answered with a web page \(text/html\), not the weights file"):
        weights.download("surgical-depth-tiny", cache, trust_on_first_use=True)
    assert not cache.exists()


def test_disk_full_names_the_file(served, monkeypatch):
    """Catches: a full disk reported as "[Errno 28] No space left on device", naming no file."""
    from full_disk import FullDiskFile

    from SurgicalDepthLib import http_download

    _, digest, cache = served
    monkeypatch.setattr(http_download, "open", FullDiskFile, raising=False)  # the partial file of a known digest
    monkeypatch.setattr(weights, "open", FullDiskFile, raising=False)  # the temporary file of a first-use download
    for digest_known in (dict(sha256=digest), dict(trust_on_first_use=True)):
        with pytest.raises(OSError, match=f"disk full while writing {re.escape(str(cache))}.depth_anything_v2_vitt"):
            weights.download("surgical-depth-tiny", cache, **digest_known)
        assert not cache.exists()


def test_download_of_a_verified_cached_file_does_not_fetch_again(served, monkeypatch):
    """Catches: ``download NAME`` fetching the whole file again (1.3 GB for Large) when the cache already holds it
    with the expected digest; a cached file with another digest is still replaced."""
    _, digest, cache = served
    _pin(monkeypatch, "surgical-depth-tiny", sha256=digest)
    path = weights.download("surgical-depth-tiny", cache)
    good = path.read_bytes()
    seen = []
    with monkeypatch.context() as offline:
        offline.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded again"))
        assert weights.download("surgical-depth-tiny", cache, progress=lambda d, t: seen.append((d, t))) == path
    assert seen == [(len(good), len(good))]
    path.write_bytes(good[:-1] + b"!")  # corrupt: fetched again
    assert weights.download("surgical-depth-tiny", cache).read_bytes() == good


def test_download_removes_partial_files_of_killed_downloads(served):
    """Catches: the temporary file of a download that was killed (SIGKILL, power loss: no clean-up ran) left in
    the cache forever (up to 1.3 GB each); a recent one (another download still running) is kept."""
    import os
    import time

    _, digest, cache = served
    cache.mkdir()
    old = cache / ".depth_anything_v2_vitt.k3q_9zab.pth"
    young = cache / ".depth_anything_v2_vitt.a1b2c3d4.pth"
    other = cache / ".depth_anything_v2_vits.k3q_9zab.pth"  # another model's
    for p in (old, young, other):
        p.write_bytes(b"partial")
    past = time.time() - 2 * 86400  # two days untouched
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    path = weights.download("surgical-depth-tiny", cache, sha256=digest)
    assert sorted(p.name for p in cache.iterdir()) == sorted([path.name, young.name, other.name, path.name + ".sha256"])


def test_cache_dir_argument_expands_the_home_folder(monkeypatch, tmp_path):
    """Catches: ``download(name, "~/weights")`` (or ``cached_path``) using a folder literally named "~" in the
    working directory, while $SURGICAL_DEPTH_CACHE had "~" expanded."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights.cache_dir("~/weights") == tmp_path / "weights"
