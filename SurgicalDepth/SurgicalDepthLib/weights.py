"""Registry of downloadable official weights, the local weight cache, and the SHA256-checked download.

This is the only module that touches the network, and only inside :func:`download` (CLI ``surgical-depth
download NAME``). Loading a registry name reads the cache and never downloads.

SHA256: the official repositories publish the files through Git LFS, whose pointer records each file's SHA256 and
size. A registry entry carries that digest (and size) only where two independent public sources agree on it (the
sources are named beside each entry); :func:`download` then verifies every download against it, and ``--sha256``
may only repeat it. An entry whose digest is ``None`` makes :func:`download` require the digest from the user
(``--sha256``) or an explicit ``trust_on_first_use=True``, which records the digest of the downloaded file in a
``<file>.sha256`` sidecar that every later load verifies. ``--sha256`` is checked before anything is downloaded.

Downloads stream into a partial file beside the final one, renamed into place only once its size and SHA256 are
right, so the final name never holds a partial or unverified file. An interrupted download (network drop, Ctrl-C,
SIGTERM, a progress callback's cancel) keeps that file, named after the URL, digest and size it is for, and the next
download of the same file resumes it with an HTTP range request (:mod:`.http_download`); a resumed file failing the
SHA256 check is deleted. A partial file is locked while in use: a second download of the same file into one cache
meanwhile streams into a temporary file of its own (:func:`~.atomic_io.atomic_path`, as do downloads without a known
digest, which are never resumed), so they cannot mix their bytes. A file already in the cache with the expected
digest is not downloaded again. Temporary files of killed downloads, and partial files of other versions, are
deleted by the next download of that file once left untouched for :data:`STALE_PARTIAL_S` seconds.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .atomic_io import atomic_path, report_disk_full, temporary_name_pattern
from .http_download import partial_file, partial_name, partial_pattern, transfer

logger = logging.getLogger(__name__)

_HF = "https://huggingface.co"


@dataclass(frozen=True)
class WeightSpec:
    """One downloadable checkpoint. ``config_name`` is its entry in :data:`configs.MODEL_CONFIGS`.

    ``sha256`` (lowercase hex) and ``size`` (bytes) are the published values of the official file, or ``None``
    where no value was confirmed; the size is checked before the (slower) hash, for a clearer error.
    """

    config_name: str
    url: str
    filename: str
    license: str
    sha256: str | None = None
    size: int | None = None


def _spec(name: str, repo: str, filename: str, license: str, sha256: str | None = None,
          size: int | None = None) -> WeightSpec:
    return WeightSpec(name, f"{_HF}/{repo}/resolve/main/{filename}", filename, license, sha256, size)


_METRIC_REPOS = {"hypersim": "Hypersim", "vkitti": "VKITTI"}
_ENCODER_OF_SIZE = {"small": "vits", "base": "vitb", "large": "vitl"}


def _metric(dataset: str, size: str, sha256: str, nbytes: int) -> WeightSpec:
    """An official V2 metric checkpoint: repo ``Depth-Anything-V2-Metric-<Dataset>-<Size>``, file
    ``depth_anything_v2_metric_<dataset>_<encoder>.pth`` (the official names, metric_depth/README.md)."""
    repo = f"depth-anything/Depth-Anything-V2-Metric-{_METRIC_REPOS[dataset]}-{size.capitalize()}"
    filename = f"depth_anything_v2_metric_{dataset}_{_ENCODER_OF_SIZE[size]}.pth"
    license = "Apache-2.0" if size == "small" else "CC-BY-NC-4.0"
    return _spec(f"depth-anything-v2-metric-{dataset}-{size}", repo, filename, license, sha256, nbytes)


# Pinned digests and sizes: each value agrees between at least two independent public sources, named per entry
# (repository + path). "LFS pointer" is a Git LFS pointer file mirroring the official file ("oid sha256:", "size");
# the other sources are download scripts / Nix fixed-output fetches that verify the official URL against the value.


WEIGHTS: dict[str, WeightSpec] = {
    # datamarkin/mozo tools/fetch/depth_anything_v2.py; ParamThakkar123/ClipTo3D checkpoints.py (digest + size);
    # capsuleutkarsh-design/UTVFX_AI_VFX_Suit first_setup.py (digest + size).
    "depth-anything-v2-small": _spec("depth-anything-v2-small", "depth-anything/Depth-Anything-V2-Small",
                                     "depth_anything_v2_vits.pth", "Apache-2.0",
                                     "715fade13be8f229f8a70cc02066f656f2423a59effd0579197bbf57860e1378", 99_218_434),
    # datamarkin/mozo tools/fetch/depth_anything_v2.py; ParamThakkar123/ClipTo3D checkpoints.py (digest + size);
    # capsuleutkarsh-design/UTVFX_AI_VFX_Suit first_setup.py (digest + size).
    "depth-anything-v2-base": _spec("depth-anything-v2-base", "depth-anything/Depth-Anything-V2-Base",
                                    "depth_anything_v2_vitb.pth", "CC-BY-NC-4.0",
                                    "0d2b7002e62d39d655571c371333340bd88f67ab95050c03591555aa05645328", 389_961_218),
    # LFS pointer skylarhknight/depth-boosted-splatting checkpoints/depth_anything_v2_vitl.pth (digest + size);
    # datamarkin/mozo tools/fetch/depth_anything_v2.py; ParamThakkar123/ClipTo3D checkpoints.py (digest + size).
    "depth-anything-v2-large": _spec("depth-anything-v2-large", "depth-anything/Depth-Anything-V2-Large",
                                     "depth_anything_v2_vitl.pth", "CC-BY-NC-4.0",
                                     "a7ea19fa0ed99244e67b624c72b8580b7e9553043245905be58796a608eb9345",
                                     1_341_395_338),
    # LFS pointer camenduru/Depth-Anything-Video-hf checkpoints/depth_anything_vits14.pth (digest + size);
    # mdietrich16/nixified-ai projects/comfyui/custom-nodes/default.nix (Nix fetch of this URL, digest).
    "depth-anything-v1-small": _spec("depth-anything-v1-small", "spaces/LiheYoung/Depth-Anything",
                                     "checkpoints/depth_anything_vits14.pth", "Apache-2.0",
                                     "59afe57cfd9f4284deaf5b753d954723d7136ae842fba3e068ba03537ca1e60e", 99_219_880),
    # LFS pointer camenduru/Depth-Anything-Video-hf checkpoints/depth_anything_vitb14.pth (digest + size);
    # mdietrich16/nixified-ai projects/comfyui/custom-nodes/default.nix (Nix fetch of this URL, digest).
    "depth-anything-v1-base": _spec("depth-anything-v1-base", "spaces/LiheYoung/Depth-Anything",
                                    "checkpoints/depth_anything_vitb14.pth", "Apache-2.0",
                                    "64ae214ae4e27424b644c49464c0aa243016f6f753d95097c8eb9ad0b9cb2d9b", 389_962_664),
    # LFS pointer camenduru/Depth-Anything-Video-hf checkpoints/depth_anything_vitl14.pth (digest + size);
    # mdietrich16/nixified-ai projects/comfyui/custom-nodes/default.nix (Nix fetch of this URL, digest).
    "depth-anything-v1-large": _spec("depth-anything-v1-large", "spaces/LiheYoung/Depth-Anything",
                                     "checkpoints/depth_anything_vitl14.pth", "Apache-2.0",
                                     "6c6a383e33e51c5fdfbf31e7ebcda943973a9e6a1cbef1564afe58d7f2e8fe63",
                                     1_341_401_882),
    # Metric V2 (official metric_depth/: Hypersim indoor, max_depth 20 m; Virtual KITTI 2 outdoor, 80 m). Digests:
    # datamarkin/mozo tools/fetch/depth_anything_v2.py and capsuleutkarsh-design/UTVFX_AI_VFX_Suit first_setup.py;
    # sizes: UTVFX_AI_VFX_Suit first_setup.py and luigifreda/pyslam scripts/install_extra.sh (size checked after
    # downloading the official URL). Licences: each Hugging Face card says apache-2.0, but the official README's
    # LICENSE section puts the Base/Large models under CC-BY-NC-4.0 and the metric ones are fine-tunes of them:
    # Base/Large are recorded as CC-BY-NC-4.0 (the stricter reading), Small as Apache-2.0 (both sources agree).
    "depth-anything-v2-metric-hypersim-small": _metric(
        "hypersim", "small", "b782898d8a3e8be1f639de33837ed85e9b4b73e40f8f5e5cd99067588d722545", 99_222_290),
    "depth-anything-v2-metric-hypersim-base": _metric(
        "hypersim", "base", "9dc9e274c5eff55c6daf27b660c0ced0eca4e8593a6da90cdcb04d2b4d3f3fa2", 389_965_138),
    "depth-anything-v2-metric-hypersim-large": _metric(
        "hypersim", "large", "6f82ff2bc543ac02ddff4aa31fa363676a8305dd3ccf04e80e2af115a044cb6d", 1_341_401_882),
    "depth-anything-v2-metric-vkitti-small": _metric(
        "vkitti", "small", "9203e538d35255c90dda4b7fedb47ff33fe725497bcca3b1e53b3a65ee63f0cb", 99_221_808),
    "depth-anything-v2-metric-vkitti-base": _metric(
        "vkitti", "base", "4dad67a7cc10b462bca48e6b8569c762b8eb3c1adada170a3851a6d3ba37bb3e", 389_964_656),
    "depth-anything-v2-metric-vkitti-large": _metric(
        "vkitti", "large", "239b1054a369e66da2576e9a118d6d7c12d90dc8ebe609579a9a09cd8e05fe38", 1_341_401_064),
}

#: The registry's names in its order (relative V2, V1, then metric V2; the GUI default first): the model choices of
#: both Slicer modules, which import this module when Slicer loads them (it needs only the standard library).
REGISTRY_NAMES: tuple[str, ...] = tuple(WEIGHTS)


#: environment variable naming the weight cache folder for every command and ``sd.load_model`` (like TORCH_HOME)
CACHE_ENV = "SURGICAL_DEPTH_CACHE"


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """Folder of downloaded weights: ``root`` if given, else ``$SURGICAL_DEPTH_CACHE`` if set, else
    ``~/.cache/surgical-depth/weights``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "surgical-depth" / "weights"


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
        mismatch = _mismatch(spec, path, want)
        if mismatch is not None:
            raise ValueError(f"{path}: {mismatch}; delete it and download again")
    return path


def _mismatch(spec: WeightSpec, path: Path, want: str) -> str | None:
    """Why the file ``path`` is not the weights of ``spec`` with the digest ``want`` (its size, then its SHA256);
    None when it is."""
    if spec.size is not None and (n := path.stat().st_size) != spec.size:
        return f"{n} bytes, but the official file has {spec.size} bytes"
    got = sha256_file(path)
    return None if got == want else f"SHA256 {got} does not match the expected {want}"


def download(name: str, root: str | os.PathLike | None = None, *, sha256: str | None = None,
             trust_on_first_use: bool = False, progress: Callable[[int, int], None] | None = None,
             timeout: float = 60.0) -> Path:
    """Download the official weights ``name`` into the cache, verifying SHA256; returns the file path.

    Args:
        sha256: expected digest (overrides a missing registry digest; must equal a pinned one). Checked, like
            every argument, before anything is downloaded or any folder is created.
        trust_on_first_use: accept and record the digest of the downloaded file when none is known.
        progress: called as ``progress(bytes_done, bytes_total)`` (total 0 when unknown), first with the bytes a
            resumed download starts from. An exception it raises (a cancel) stops the download, as Ctrl-C does,
            and keeps the bytes received for the next call to resume from.
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
    cached = _verified_copy(spec, folder, want)
    if cached is not None:
        logger.info("%s is already in the cache (%s, SHA256 verified); licence %s", name, cached, spec.license)
        _remove_stale_partials(cached, None)  # a killed download's leftovers go even when nothing is downloaded
        if spec.sha256 is None:  # the digest given (--sha256) is the one later loads check
            _record_digest(cached, want)
        if progress is not None:
            n = cached.stat().st_size
            progress(n, n)
        return cached
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(spec.filename).name
    _remove_stale_partials(path, partial_name(path, spec.url, want, spec.size) if want is not None else None)
    try:
        return _fetch(spec, name, folder, want, progress, timeout)
    except BaseException:  # a failed download leaves no empty cache folder it made
        for made in created:
            with contextlib.suppress(OSError):
                made.rmdir()  # only when empty
        raise


#: seconds after which an untouched temporary file of a download counts as left by a killed download (a running
#: download writes to it at least every ``timeout`` seconds, 60 by default, or fails)
STALE_PARTIAL_S = 3600.0


def _verified_copy(spec: WeightSpec, folder: Path, want: str | None) -> Path | None:
    """The cached file of ``spec`` if it has the expected digest ``want`` (and the pinned size), else None."""
    path = folder / Path(spec.filename).name
    return path if want is not None and path.is_file() and _mismatch(spec, path, want) is None else None


def _remove_stale_partials(path: Path, keep: Path | None) -> None:
    """Delete the temporary files of ``path`` (``atomic_path``'s ``.<stem>.<8 characters><suffix>``) and its partial
    files of another URL, digest or size (``.<name>.<key>.partial``) untouched for :data:`STALE_PARTIAL_S` seconds:
    left by a killed download, or by one of another version. Younger ones may be another download's; ``keep``, the
    partial this download resumes, stays however old (a laptop asleep overnight)."""
    patterns = (temporary_name_pattern(path), partial_pattern(path))
    now = time.time()
    for entry in path.parent.iterdir():
        with contextlib.suppress(OSError):
            if any(p.fullmatch(entry.name) for p in patterns) and entry != keep and entry.is_file() \
                    and now - entry.stat().st_mtime > STALE_PARTIAL_S:
                entry.unlink()
                logger.info("removed %s, left by an interrupted download", entry)


def _fetch(spec: WeightSpec, name: str, folder: Path, want: str | None, progress: Callable[[int, int], None] | None,
           timeout: float) -> Path:
    """Download ``spec.url`` into ``folder`` (size- and SHA256-checked, renamed into place only then), resuming the
    partial file an interrupted download of the same URL, digest and size left; record a first-use digest."""
    path = folder / Path(spec.filename).name
    logger.info("downloading %s (licence %s) from %s", name, spec.license, spec.url)
    # report_disk_full outermost: closing the file flushes it, which can fail for want of space too
    with report_disk_full(path), contextlib.ExitStack() as stack:
        out = None
        if want is not None:  # without a digest a resumed file could not be checked: no partial is kept
            out = stack.enter_context(partial_file(path, partial_name(path, spec.url, want, spec.size)))
        if out is None:  # or another download of this file is using that partial right now
            out = stack.enter_context(open(stack.enter_context(atomic_path(path)), "a+b"))
        try:
            with report_disk_full(path):  # inside partial_file, which deletes the partial of a full disk
                got, resumed = transfer(spec.url, out, size=spec.size, progress=progress, timeout=timeout)
        except http.client.HTTPException as exc:  # a broken response: not an OSError, and says neither URL nor file
            text = " ".join(str(exc).split())  # one line: a bad status line ends in its CR LF
            raise ConnectionError(f"broken HTTP response: {type(exc).__name__}: {text}") from None
        if want is not None and got != want:
            again = f" (resumed at byte {resumed}; the partial file was deleted)" if resumed else ""
            raise ValueError(f"downloaded {spec.url}: SHA256 {got} does not match the expected {want}{again}")
    if want is None or spec.sha256 is None:
        _record_digest(path, got)
    return path


def _record_digest(path: Path, digest: str) -> None:
    """Write the ``<file>.sha256`` sidecar that :func:`expected_sha256` reads for weights without a pinned digest."""
    with atomic_path(path.parent / (path.name + ".sha256")) as tmp:
        tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
