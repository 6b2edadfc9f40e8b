"""Registry of downloadable official weights, the local weight cache, and the SHA256-checked download.

This is the only module that touches the network, and only inside :func:`download` (CLI ``surgical-depth
download NAME``). Loading a registry name reads the cache and never downloads.

SHA256: the official repositories publish the files through Git LFS; where the digest was not available to this
project offline it is ``None`` here, and :func:`download` then requires the digest from the user
(``--sha256``) or an explicit ``trust_on_first_use=True``, which records the digest of the downloaded file in a
``<file>.sha256`` sidecar that every later load verifies.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._atomic import atomic_path

log = logging.getLogger(__name__)

_HF = "https://huggingface.co"


@dataclass(frozen=True)
class WeightSpec:
    """One downloadable checkpoint. ``config_name`` is its entry in :data:`configs.MODEL_CONFIGS`."""

    config_name: str
    url: str
    filename: str
    license: str
    sha256: str | None = None


def _spec(name: str, repo: str, filename: str, license: str) -> WeightSpec:
    return WeightSpec(name, f"{_HF}/{repo}/resolve/main/{filename}", filename, license)


WEIGHTS: dict[str, WeightSpec] = {
    "depth-anything-v2-small": _spec("depth-anything-v2-small", "depth-anything/Depth-Anything-V2-Small",
                                     "depth_anything_v2_vits.pth", "Apache-2.0"),
    "depth-anything-v2-base": _spec("depth-anything-v2-base", "depth-anything/Depth-Anything-V2-Base",
                                    "depth_anything_v2_vitb.pth", "CC-BY-NC-4.0"),
    "depth-anything-v2-large": _spec("depth-anything-v2-large", "depth-anything/Depth-Anything-V2-Large",
                                     "depth_anything_v2_vitl.pth", "CC-BY-NC-4.0"),
    "depth-anything-v1-small": _spec("depth-anything-v1-small", "spaces/LiheYoung/Depth-Anything",
                                     "checkpoints/depth_anything_vits14.pth", "Apache-2.0"),
    "depth-anything-v1-base": _spec("depth-anything-v1-base", "spaces/LiheYoung/Depth-Anything",
                                    "checkpoints/depth_anything_vitb14.pth", "Apache-2.0"),
    "depth-anything-v1-large": _spec("depth-anything-v1-large", "spaces/LiheYoung/Depth-Anything",
                                     "checkpoints/depth_anything_vitl14.pth", "Apache-2.0"),
    "depth-anything-v2-metric-hypersim-small": _spec(
        "depth-anything-v2-metric-hypersim-small", "depth-anything/Depth-Anything-V2-Metric-Hypersim-Small",
        "depth_anything_v2_metric_hypersim_vits.pth", "Apache-2.0"),
    "depth-anything-v2-metric-vkitti-small": _spec(
        "depth-anything-v2-metric-vkitti-small", "depth-anything/Depth-Anything-V2-Metric-VKITTI-Small",
        "depth_anything_v2_metric_vkitti_vits.pth", "Apache-2.0"),
}


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """Folder of downloaded weights: ``root`` if given, else ``~/.cache/surgical-depth/weights``."""
    return Path(root) if root is not None else Path.home() / ".cache" / "surgical-depth" / "weights"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _get_spec(name: str) -> WeightSpec:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise ValueError(f"no downloadable weights named {name!r}; known: {', '.join(sorted(WEIGHTS))}") from None


def expected_sha256(name: str, root: str | os.PathLike | None = None) -> str | None:
    """The digest a cached file must have: the registry's, else the recorded sidecar's, else None."""
    spec = _get_spec(name)
    if spec.sha256:
        return spec.sha256
    sidecar = cache_dir(root) / (Path(spec.filename).name + ".sha256")
    return sidecar.read_text().split()[0] if sidecar.is_file() else None


def cached_path(name: str, root: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Path of the cached weights of ``name``; raises FileNotFoundError with the download command if absent."""
    spec = _get_spec(name)
    path = cache_dir(root) / Path(spec.filename).name
    if not path.is_file():
        raise FileNotFoundError(f"weights {name!r} are not in the cache ({path}); run: surgical-depth download {name}")
    if verify:
        want = expected_sha256(name, root)
        if want is None:
            raise ValueError(f"{path}: no SHA256 recorded for {name!r}; re-run surgical-depth download {name} "
                             "--sha256 HEX")
        got = sha256_file(path)
        if got != want:
            raise ValueError(f"{path}: SHA256 {got} does not match the expected {want}; delete it and download again")
    return path


def download(name: str, root: str | os.PathLike | None = None, *, sha256: str | None = None,
             trust_on_first_use: bool = False, progress: Callable[[int, int], None] | None = None,
             timeout: float = 60.0) -> Path:
    """Download the official weights ``name`` into the cache, verifying SHA256; returns the file path.

    Args:
        sha256: expected digest (overrides a missing registry digest; must equal a known one).
        trust_on_first_use: accept and record the digest of the downloaded file when none is known.
        progress: called as ``progress(bytes_done, bytes_total)`` (total 0 when unknown).
    """
    spec = _get_spec(name)
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256.strip()):
        raise ValueError(f"--sha256 {sha256!r} is not a SHA256 digest (64 hexadecimal digits)")
    sha256 = sha256.strip() if sha256 is not None else None
    want = (sha256 or "").lower() or spec.sha256
    if spec.sha256 and sha256 and sha256.lower() != spec.sha256:
        raise ValueError(f"--sha256 {sha256} differs from the registry digest {spec.sha256} of {name!r}")
    if want is None and not trust_on_first_use:
        raise ValueError(f"no SHA256 is known for {name!r}: pass the digest published with the weights "
                         "(--sha256 HEX) or accept recording the downloaded file's digest (--trust-on-first-use)")
    folder = cache_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(spec.filename).name
    digest = hashlib.sha256()
    with atomic_path(path) as tmp:
        log.info("downloading %s from %s", name, spec.url)
        with urllib.request.urlopen(spec.url, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while block := resp.read(1 << 20):
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
        got = digest.hexdigest()
        if want is not None and got != want:
            raise ValueError(f"downloaded {spec.url}: SHA256 {got} does not match the expected {want}")
    if want is None or spec.sha256 is None:
        with atomic_path(folder / (path.name + ".sha256")) as tmp:
            tmp.write_text(f"{got}  {path.name}\n")
    return path
