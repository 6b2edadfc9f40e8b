"""Calibration files → ``Intrinsics`` (``Intrinsics.from_file``): JSON, OpenCV ``FileStorage`` YAML/XML, plain text
matrices and OCamCalib's ``calib_results.txt`` (:mod:`.ocam`)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from .camera import Intrinsics
from .ocam import is_ocam_file, read_ocam_file

__all__ = ["file_states_size", "read_calibration"]


def read_calibration(path: Path, width: int | None = None, height: int | None = None) -> Intrinsics:
    """See :meth:`Intrinsics.from_file`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"intrinsics file not found: {path}")
    try:
        intr = _read_by_suffix(path, width, height)
    except UnicodeDecodeError as exc:  # its own message names the codec and byte, not the file
        raise ValueError(f"intrinsics file {path} is not a text file (byte {exc.start}: {exc.reason})") from None
    _check_size(intr, width, height, path)
    return intr


def _read_by_suffix(path: Path, width: int | None, height: int | None) -> Intrinsics:
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"intrinsics file {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"intrinsics file {path} must hold a JSON object, got {type(data).__name__}")
        data = {**data, **{k: v for k, v in (("width", width), ("height", height)) if v is not None
                           and k not in data}}
        intr = Intrinsics.from_dict(data)
    elif suffix in (".yaml", ".yml", ".xml"):
        intr = _read_opencv_storage(path, width, height)
    elif is_ocam_file(path):
        intr = Intrinsics(**read_ocam_file(path))
    else:
        intr = _read_text_matrix(path, width, height)
    return intr


def _check_size(intr: Intrinsics, width: int | None, height: int | None, source: Any) -> None:
    if (width is not None and width != intr.width) or (height is not None and height != intr.height):
        raise ValueError(f"intrinsics from {source} are for {intr.width}x{intr.height}, "
                         f"but {width}x{height} was given")


def _read_opencv_storage(path: Path, width: int | None, height: int | None) -> Intrinsics:
    import cv2  # lazy: heavy import

    text = path.read_text()
    if path.suffix.lower() != ".xml" and not text.lstrip().startswith("%YAML"):
        text = "%YAML:1.0\n" + text  # ROS/plain YAML lacks the header FileStorage needs
    fs = cv2.FileStorage(text, cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_MEMORY)
    try:
        def matrix(name: str) -> np.ndarray | None:
            node = fs.getNode(name)
            if node.empty():
                return None
            if node.isMap() and not node.getNode("data").empty():  # ROS camera_info style
                data = node.getNode("data")
                vals = [data.at(i).real() for i in range(data.size())]
                return np.asarray(vals, dtype=np.float64)
            mat = node.mat()
            if mat is not None:
                return np.asarray(mat, dtype=np.float64).ravel()
            if node.isSeq():
                return np.asarray([node.at(i).real() for i in range(node.size())], dtype=np.float64)
            return None

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
        w = scalar("image_width") or width
        h = scalar("image_height") or height
    finally:
        fs.release()
    if w is None or h is None:
        raise ValueError(f"intrinsics file {path} has no image_width/image_height; pass width and height")
    distortion = None
    if dist is not None and np.any(dist):
        if model in ("fisheye", "equidistant"):
            distortion = {"model": "fisheye", "coeffs": dist.tolist()}
        else:
            distortion = {"model": "opencv", "coeffs": dist.tolist()}
    return Intrinsics.from_matrix(K.reshape(3, 3), w, h, distortion)


def _read_text_matrix(path: Path, width: int | None, height: int | None) -> Intrinsics:
    tokens = [t for t in re.split(r"[,\s;\[\]]+", path.read_text()) if t]
    try:
        values = np.asarray([float(t) for t in tokens], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"intrinsics file {path}: expected 9 numbers (3x3 K) or 4 (fx fy cx cy), "
                         f"found a non-number: {exc}") from exc
    if width is None or height is None:
        raise ValueError(f"intrinsics file {path} holds no image size; pass width and height")
    if values.size == 9:
        return Intrinsics.from_matrix(values.reshape(3, 3), width, height)
    if values.size == 4:
        return Intrinsics(*values.tolist(), width=width, height=height)
    raise ValueError(f"intrinsics file {path}: expected 9 numbers (3x3 K) or 4 (fx fy cx cy), got {values.size}")


def file_states_size(path: Path) -> bool:
    """Whether the calibration file names its image size (then it may be rescaled to the frames')."""
    text = path.read_text(errors="replace")
    return ("image_width" in text and "image_height" in text) or ('"width"' in text and '"height"' in text) \
        or is_ocam_file(path)
