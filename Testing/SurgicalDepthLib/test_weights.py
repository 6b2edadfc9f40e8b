"""Weight registry, cache and SHA256-checked download (exercised through file:// URLs, no network)."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import re
import threading
import urllib.request

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
        assert out.strip() == f"saved surgical-depth-tiny to {cache / 'depth_anything_v2_vitt.pth'}"
        return
    events = [json.loads(line) for line in out.splitlines()]  # stdout holds JSON objects only
    progress = [e for e in events[:-1] if e["event"] == "progress"]
    assert len(progress) == len(events) - 1 and {e["stage"] for e in progress} == {"download"}
    assert progress[-1]["step"] == progress[-1]["total"] == size
    assert events[-1] == {"event": "done", "name": "surgical-depth-tiny",
                          "path": str(cache / "depth_anything_v2_vitt.pth")}


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
