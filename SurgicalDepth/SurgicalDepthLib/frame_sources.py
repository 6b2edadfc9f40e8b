"""Frame sources by name: which files are videos or images (by suffix), what kind of source a path is (a video, a
folder of images, one image or a glob pattern) and the files it lists, in natural name order. No image or video is
opened or decoded here (:mod:`SurgicalDepthLib.video` reads the frames); run manifests are read.

A folder or glob never lists the outputs of a ``surgical-depth`` run (the files its run manifest lists, in the
folder of the manifest or below it; a data set written by ``synth`` is no run output): a glob such as
``data/*/*.png`` also matches the colour maps and field-of-view masks that ``predict`` wrote into ``data/depth``,
and a rerun would read them as frames.
"""
from __future__ import annotations

import glob as _glob
import logging
import os
import re
from pathlib import Path

from .run_folder import DATASET_COMMANDS, read_manifest

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_GLOB_CHARS = re.compile(r"[*?\[]")


def natural_key(name: str) -> tuple[list, str]:
    """Sort key that orders ``frame2`` before ``frame10`` (digit runs compare as numbers, letters without case);
    names equal so (``frame1``/``frame01``, ``A``/``a``) are ordered by the name itself, so that the order never
    depends on the order the file system lists them in."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)], name


def is_video_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a video suffix (``VIDEO_SUFFIXES``); the file is not opened."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has an image suffix (``IMAGE_SUFFIXES``); the file is not opened."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _run_outputs(folder: Path, cache: dict[Path, list[frozenset[Path]]]) -> list[frozenset[Path]]:
    """The output files (resolved paths) that the run manifests (:mod:`~SurgicalDepthLib.run_folder`) of the
    resolved ``folder`` and of every folder above it list, one set per manifest; ``cache`` keeps them per folder.
    A data set's manifest (``DATASET_COMMANDS``) lists frames, not outputs: it is left out."""
    if folder not in cache:
        above = _run_outputs(folder.parent, cache) if folder.parent != folder else []
        manifest = read_manifest(folder)
        if manifest is None or manifest[0].get("command") in DATASET_COMMANDS:
            cache[folder] = above
        else:
            cache[folder] = [*above, frozenset(folder / relative for relative in manifest[1])]
    return cache[folder]


def _is_run_output(path: Path, cache: dict[Path, list[frozenset[Path]]]) -> bool:
    """Whether the file ``path`` is listed as an output by a run manifest in its folder or a folder above it."""
    resolved = path.resolve()
    return any(resolved in outputs for outputs in _run_outputs(resolved.parent, cache))


def _listed_all(path: str | os.PathLike, kind: str, wanted) -> tuple[list[Path], list[Path]]:
    """``(files, run outputs)`` of a glob or folder source that ``wanted(path)`` accepts, each in natural name order
    (a folder: the files directly inside it, hidden ones left out as a glob leaves them out); the run outputs
    (:func:`_is_run_output`) are no frames and are not in ``files``."""
    if kind == "glob":
        found = [Path(p) for p in _glob.glob(str(path), recursive=True) if Path(p).is_file() and wanted(p)]
        found.sort(key=lambda p: natural_key(str(p)))
    else:
        found = [p for p in Path(path).iterdir() if not p.name.startswith(".") and p.is_file() and wanted(p)]
        found.sort(key=lambda p: natural_key(p.name))
    cache: dict[Path, list[frozenset[Path]]] = {}
    files: list[Path] = []
    outputs: list[Path] = []
    for p in found:
        (outputs if _is_run_output(p, cache) else files).append(p)
    if outputs:
        logger.info("%s: %d files written by an earlier surgical-depth run (e.g. %s) are outputs, not frames: left "
                    "out", path, len(outputs), outputs[0])
    return files, outputs


def _listed(path: str | os.PathLike, kind: str, wanted) -> list[Path]:
    """The files of a glob or folder source that ``wanted(path)`` accepts, in natural name order, without the
    outputs of earlier runs (:func:`_listed_all`)."""
    return _listed_all(path, kind, wanted)[0]


def _outputs_note(outputs: list[Path]) -> str:
    """The end of a "no image files" message when the only images were outputs of an earlier run."""
    if not outputs:
        return ""
    return (f"; the {len(outputs)} there (e.g. {outputs[0].name}) were written by an earlier surgical-depth run, "
            "whose outputs are never read as frames")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (``IMAGE_SUFFIXES``) directly inside ``folder``, in natural name order; hidden files (``.name``:
    macOS's ``._frame.png`` metadata, a writer's temporary file) are left out, as a glob leaves them out, and so are
    the outputs of earlier surgical-depth runs."""
    return _listed(folder, "folder", is_image_file)


#: the kinds of frame source that :func:`frame_source_kind` tells apart
FRAME_SOURCE_KINDS = ("video", "folder", "image", "glob")


def frame_source_kind(path: str | os.PathLike) -> str:
    """What kind of frame source ``path`` is, from its name and what exists (nothing is opened or decoded):

    ``"glob"`` (a pattern with ``*``, ``?`` or ``[`` that is not itself an existing path), ``"folder"``, ``"image"``
    (an ``IMAGE_SUFFIXES`` file) or ``"video"`` (a ``VIDEO_SUFFIXES`` file). :func:`open_frames` and ``surgical-depth
    predict`` classify their inputs with it.

    Raises:
        FileNotFoundError: ``path`` does not exist and is no glob. ValueError: a file with another suffix.
    """
    text, path = str(path), Path(path)
    if _GLOB_CHARS.search(text) and not path.exists():
        return "glob"
    if not path.exists():
        if path.is_symlink():  # exists() follows the link
            raise FileNotFoundError(f"input {path} is a symbolic link to nothing (a dangling link or a link loop)")
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_dir():
        return "folder"
    if is_image_file(path):
        return "image"
    if is_video_file(path):
        return "video"
    raise ValueError(f"input {path} has an unsupported suffix {path.suffix.lower()!r}; expected a video "
                     f"({', '.join(VIDEO_SUFFIXES)}), an image ({', '.join(IMAGE_SUFFIXES)}), a folder or a glob")


def glob_folder(pattern: str | os.PathLike) -> Path:
    """The folder a glob pattern lists: its leading parts without pattern characters (``"."`` when none)."""
    parts = Path(pattern).parts
    leading = next((i for i, part in enumerate(parts) if _GLOB_CHARS.search(part)), len(parts))
    return Path(*parts[:leading]) if leading else Path(".")


def frame_source_images(path: str | os.PathLike, kind: str | None = None, required: bool = True) -> list[Path]:
    """The image files of an image source, in natural name order: the files a glob matches, the images directly
    inside a folder, or the image itself. ``kind``: :func:`frame_source_kind` of ``path`` when already known.
    ``required=False``: ``[]`` for a glob or folder without images (one of videos) instead of an error.

    Raises:
        FileNotFoundError: a glob that matches no image file (or a missing path). ValueError: a folder without
        image files, or a video.
    """
    kind = frame_source_kind(path) if kind is None else kind
    if kind == "glob":
        files, outputs = _listed_all(path, kind, is_image_file)
        if not files and required:
            raise FileNotFoundError(f"glob pattern {str(path)!r} matches no image files ({', '.join(IMAGE_SUFFIXES)})"
                                    + _outputs_note(outputs))
        return files
    if kind == "folder":
        files, outputs = _listed_all(path, kind, is_image_file)
        if not files and required:
            raise ValueError(f"folder {path} contains no image files ({', '.join(IMAGE_SUFFIXES)})"
                             + _outputs_note(outputs))
        return files
    if kind == "image":
        return [Path(path)]
    raise ValueError(f"{path} is a {kind} source, not images (expected one of 'glob', 'folder', 'image')")


def frame_source_videos(path: str | os.PathLike, kind: str | None = None) -> list[Path]:
    """The video files (``VIDEO_SUFFIXES``) of a source, in natural name order: the files a glob matches, the videos
    directly inside a folder (hidden ones left out), the video itself; ``[]`` for an image. ``kind``:
    :func:`frame_source_kind` of ``path`` when already known."""
    kind = frame_source_kind(path) if kind is None else kind
    if kind in ("glob", "folder"):
        return _listed(path, kind, is_video_file)
    return [Path(path)] if kind == "video" else []
