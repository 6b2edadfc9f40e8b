"""Calibration files → ``Intrinsics`` (``Intrinsics.from_file``): JSON, OpenCV ``FileStorage`` YAML/XML, plain text
matrices and OCamCalib's ``calib_results.txt`` (:mod:`.ocam`).

A file in pixels may leave out its image size (a bare 3×3 K): it is then read at a size the caller gives. Each reader
checks the whole text before it needs that size, and raises :class:`MissingImageSize` when it has none, so a file
can be checked before any frame size is known (:func:`check_calibration_file`)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from .camera import Intrinsics
from .ocam import is_ocam_text, parse_ocam
from .text_files import read_text_file

__all__ = ["MissingImageSize", "check_calibration_file", "read_calibration", "read_calibration_at"]


class MissingImageSize(ValueError):
    """A calibration file without its image size, read without a size to fall back on."""


def read_calibration(path: Path, width: int | None = None, height: int | None = None) -> Intrinsics:
    """See :meth:`Intrinsics.from_file`: ``width``/``height`` are used where the file states no size and must agree
    with the size it states."""
    intr = read_calibration_at(path, width, height)
    _check_size(intr, width, height, path)
    return intr


def read_calibration_at(path: Path, width: int | None, height: int | None) -> Intrinsics:
    """The file's intrinsics at the size it states, else at ``width × height`` (MissingImageSize without one).
    The caller fits them to its frames (:meth:`Intrinsics.fitted`)."""
    path = Path(path)
    text = read_text_file(path, "intrinsics file")
    try:
        return _parse(path, text, width, height)
    except (TypeError, ValueError) as exc:  # a value's own check (Intrinsics) names the field, not the file
        if str(path) in str(exc):
            raise
        raise ValueError(f"intrinsics file {path}: {exc}") from None


def check_calibration_file(path: Path) -> None:
    """Raise (FileNotFoundError, ValueError naming the file) when ``path`` cannot be read as a calibration at any
    frame size; a file that leaves the size to the frames passes once the rest of it reads."""
    try:
        read_calibration_at(path, None, None)
    except MissingImageSize:
        pass


def _parse(path: Path, text: str, width: int | None, height: int | None) -> Intrinsics:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _read_json(path, text, width, height)
    if suffix in (".yaml", ".yml", ".xml"):
        return _read_opencv_storage(path, text, width, height)
    if is_ocam_text(text):
        return Intrinsics(**parse_ocam(text, path))
    return _read_text_matrix(path, text, width, height)


def _read_json(path: Path, text: str, width: int | None, height: int | None) -> Intrinsics:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"intrinsics file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"intrinsics file {path} must hold a JSON object, got {type(data).__name__}")
    stated = _stated_size(path, data.get("width"), data.get("height"), "width/height")
    data = {**data, "width": stated[0] if stated else width, "height": stated[1] if stated else height}
    if data["width"] is None or data["height"] is None:
        absent = [k for k in (("K",) if "K" in data else ("fx", "fy", "cx", "cy")) if k not in data]
        if absent:
            raise ValueError(f"intrinsics file {path} is missing {absent}; expected fx, fy, cx, cy, width, height "
                             f"[, distortion] or K, dist, width, height")
        raise MissingImageSize(f"intrinsics file {path} has no width/height; pass the image size")
    return Intrinsics.from_dict(data)


def _stated_size(path: Path, width: Any, height: Any, names: str) -> tuple[Any, Any] | None:
    """The image size a file states (both values), None when it states neither; one of the two is an error."""
    if width is None and height is None:
        return None
    if width is None or height is None:
        raise ValueError(f"intrinsics file {path} states only one of {names}")
    return width, height


def _check_size(intr: Intrinsics, width: int | None, height: int | None, source: Any) -> None:
    if (width is not None and width != intr.width) or (height is not None and height != intr.height):
        raise ValueError(f"intrinsics from {source} are for {intr.width}x{intr.height}, "
                         f"but {width}x{height} was given")


def _read_opencv_storage(path: Path, text: str, width: int | None, height: int | None) -> Intrinsics:
    import cv2  # lazy: heavy import

    if path.suffix.lower() != ".xml" and not text.lstrip().startswith("%YAML"):
        text = "%YAML:1.0\n" + text  # ROS/plain YAML lacks the header FileStorage needs
    try:  # a parse error surfaces as cv2.error, or as SystemError from the binding
        fs = cv2.FileStorage(text, cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_MEMORY)
    except (cv2.error, SystemError) as exc:
        cause = exc.__cause__ or exc.__context__ or exc  # the binding's SystemError wraps OpenCV's own error
        raise ValueError(f"intrinsics file {path} is not valid OpenCV YAML/XML: "
                         f"{(str(cause).strip().splitlines() or [type(cause).__name__])[-1]}") from None
    try:
        def matrix(name: str) -> np.ndarray | None:
            node = fs.getNode(name)
            if node.empty():
                return None
            if node.isSeq():  # a plain list (a ROS CameraInfo message's K, D); mat() fails on it
                return np.asarray([node.at(i).real() for i in range(node.size())], dtype=np.float64)
            if node.isMap() and not node.getNode("data").empty():  # ROS camera_info style
                data = node.getNode("data")
                return np.asarray([data.at(i).real() for i in range(data.size())], dtype=np.float64)
            mat = node.mat() if node.isMap() else None
            return None if mat is None else np.asarray(mat, dtype=np.float64).ravel()

        def scalar(name: str) -> int | None:
            node = fs.getNode(name)
            return None if node.empty() else int(node.real())

        K = matrix("camera_matrix")
        if K is None:
            K = matrix("K")
        if K is None or K.size != 9:
            raise ValueError(f"intrinsics file {path}: expected a 3x3 'camera_matrix', got "
                             f"{'nothing' if K is None else f'{K.size} values'}")
        dist = matrix("distortion_coefficients")
        if dist is None:
            dist = matrix("D")
        model_node = fs.getNode("distortion_model")
        model = "" if model_node.empty() else model_node.string().lower()
        stated = _stated_size(path, scalar("image_width"), scalar("image_height"), "image_width/image_height") \
            or _stated_size(path, scalar("width"), scalar("height"), "width/height")  # a CameraInfo message
        w, h = stated or (width, height)
    finally:
        fs.release()
    distortion = None
    if dist is not None and np.any(dist):
        if model in ("fisheye", "equidistant"):
            distortion = {"model": "fisheye", "coeffs": dist.tolist()}
        else:
            distortion = {"model": "opencv", "coeffs": dist.tolist()}
    if w is None or h is None:
        raise MissingImageSize(f"intrinsics file {path} has no image_width/image_height; pass the image size")
    return Intrinsics.from_matrix(K.reshape(3, 3), w, h, distortion)


def _read_text_matrix(path: Path, text: str, width: int | None, height: int | None) -> Intrinsics:
    tokens = [t for t in re.split(r"[,\s;\[\]]+", text) if t]
    try:
        values = np.asarray([float(t) for t in tokens], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"intrinsics file {path}: expected 9 numbers (3x3 K) or 4 (fx fy cx cy), "
                         f"found a non-number: {exc}") from exc
    if values.size not in (9, 4):
        raise ValueError(f"intrinsics file {path}: expected 9 numbers (3x3 K) or 4 (fx fy cx cy), got {values.size}")
    if width is None or height is None:
        raise MissingImageSize(f"intrinsics file {path} holds no image size; pass width and height")
    if values.size == 9:
        return Intrinsics.from_matrix(values.reshape(3, 3), width, height)
    return Intrinsics(*values.tolist(), width=width, height=height)
