"""Calibration files → ``Intrinsics`` (``Intrinsics.from_file``): JSON, OpenCV ``FileStorage`` YAML/XML, ROS
camera_info, Kalibr camchain YAML, COLMAP ``cameras.txt``, plain text matrices and OCamCalib's ``calib_results.txt``
(:mod:`.ocam`).

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
    if suffix in (".yaml", ".yml") and all(key.search(text) for key in _KALIBR_KEYS):
        return _read_kalibr(path, text)
    if suffix in (".yaml", ".yml", ".xml"):
        return _read_opencv_storage(path, text, width, height)
    if is_ocam_text(text):
        return Intrinsics(**parse_ocam(text, path))
    if _COLMAP_LINE.search(text):
        return _read_colmap(path, text)
    return _read_text_matrix(path, text, width, height)


#: what ``Intrinsics.from_file`` reads, for the errors of a file it cannot
_SUPPORTED_FORMATS = ("supported: OpenCV FileStorage YAML/XML/JSON (camera_matrix or K, distortion_coefficients or D, "
                     "image_width, image_height), ROS camera_info, Kalibr camchain, COLMAP cameras.txt, OCamCalib "
                     "calib_results.txt, JSON {fx, fy, cx, cy, width, height}, a text 3x3 K")


def _read_json(path: Path, text: str, width: int | None, height: int | None) -> Intrinsics:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"intrinsics file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"intrinsics file {path} must hold a JSON object, got {type(data).__name__}")
    if set(_K_NAMES) & set(data) and not {"fx", "dist", "distortion"} & set(data):  # cv2.FileStorage's JSON,
        return _from_fields(path, *_mapping_fields(path, data), width, height)  # a ROS CameraInfo message's
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


_K_NAMES = ("camera_matrix", "K", "k")  # OpenCV's calibration samples; ROS 1 / ROS 2 CameraInfo messages
_D_NAMES = ("distortion_coefficients", "D", "d")
_FISHEYE_MODELS = ("fisheye", "equidistant")  # ROS's and Kalibr's name for OpenCV's fisheye model
_OPENCV_MODELS = ("", "none", "opencv", "pinhole", "plumb_bob", "rational_polynomial", "radtan", "radial-tangential")


def _read_opencv_storage(path: Path, text: str, width: int | None, height: int | None) -> Intrinsics:
    import cv2  # lazy: heavy import

    header = text.lstrip().startswith("%YAML")
    source = text if path.suffix.lower() == ".xml" or header else "%YAML:1.0\n" + text  # ROS/plain YAML lacks the
    try:  # header FileStorage needs; a parse error surfaces as cv2.error, or as SystemError from the binding
        fs = cv2.FileStorage(source, cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_MEMORY)
    except (cv2.error, SystemError) as exc:
        plain = None if header or path.suffix.lower() == ".xml" else _plain_yaml(text)
        if plain is not None:  # YAML that OpenCV's parser does not take (a ros2 topic echo's block lists)
            return _from_fields(path, *_mapping_fields(path, plain), width, height)
        cause = exc.__cause__ or exc.__context__ or exc  # the binding's SystemError wraps OpenCV's own error
        raise ValueError(f"intrinsics file {path} is not valid OpenCV YAML/XML: "
                         f"{(str(cause).strip().splitlines() or [type(cause).__name__])[-1]}") from None
    try:
        return _from_fields(path, *_storage_fields(path, fs), width, height)
    finally:
        fs.release()


def _plain_yaml(text: str) -> dict | None:
    """The first document of a YAML text as a dict (None when it is not YAML or holds no mapping)."""
    import yaml  # lazy: only for YAML that OpenCV's parser refuses

    try:
        return next((doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)), None)
    except yaml.YAMLError:
        return None


def _storage_fields(path: Path, fs: Any) -> tuple:
    """(K, dist, distortion_model, fisheye flag, stated size) of an open ``cv2.FileStorage``."""
    def matrix(names: tuple[str, ...]) -> tuple[str, np.ndarray | None]:
        for name in names:
            node = fs.getNode(name)
            if node.empty():
                continue
            if node.isSeq():  # a plain list (a ROS CameraInfo message's K, D); mat() fails on it
                return name, _numbers(path, name, _node_values(node))
            if node.isMap() and not node.getNode("data").empty():  # ROS camera_info style
                data = node.getNode("data")
                return name, _numbers(path, name, [data.at(i).real() for i in range(data.size())])
            mat = node.mat() if node.isMap() else None
            if mat is None:
                raise ValueError(f"intrinsics file {path}: '{name}' must be a matrix or a list of numbers")
            return name, np.asarray(mat, dtype=np.float64).ravel()
        return names[0], None

    def scalar(name: str) -> Any:
        node = fs.getNode(name)
        if node.empty():
            return None
        if node.isInt():
            return int(node.real())
        if node.isReal():
            return node.real()  # Intrinsics refuses a fractional size
        raise ValueError(f"intrinsics file {path}: '{name}' must be a number, got {node.string()!r}")

    model_node = fs.getNode("distortion_model")
    model = None if model_node.empty() else model_node.string()
    stated = _stated_size(path, scalar("image_width"), scalar("image_height"), "image_width/image_height") \
        or _stated_size(path, scalar("width"), scalar("height"), "width/height")  # a CameraInfo message
    return matrix(_K_NAMES), matrix(_D_NAMES)[1], model, scalar("fisheye_model"), stated


def _node_values(node: Any) -> list:
    """The numbers of a ``cv2.FileNode`` list, nested lists flattened (a 3×3 K as three rows); other items as their
    text, for :func:`_numbers` to refuse."""
    values = []
    for i in range(node.size()):
        item = node.at(i)
        values.extend(_node_values(item) if item.isSeq() else
                      [item.real() if item.isInt() or item.isReal() else item.string()])
    return values


def _mapping_fields(path: Path, data: dict) -> tuple:
    """:func:`_storage_fields` of a calibration read as a dict (JSON written by ``cv2.FileStorage``, plain YAML)."""
    def matrix(names: tuple[str, ...]) -> tuple[str, np.ndarray | None]:
        name = next((n for n in names if data.get(n) is not None), names[0])
        value = data.get(name)
        if isinstance(value, dict):  # {rows, cols, data}: cv2.FileStorage's JSON, ROS camera_info YAML
            value = value.get("data")
        return name, None if value is None else _numbers(path, name, value)

    stated = _stated_size(path, data.get("image_width"), data.get("image_height"), "image_width/image_height") \
        or _stated_size(path, data.get("width"), data.get("height"), "width/height")
    return matrix(_K_NAMES), matrix(_D_NAMES)[1], data.get("distortion_model"), data.get("fisheye_model"), stated


def _numbers(path: Path, name: str, values: Any) -> np.ndarray:
    """float64 flat array of a calibration field's numbers (ValueError naming the file and field otherwise)."""
    try:
        return np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"intrinsics file {path}: '{name}' must hold numbers, got {values!r}"[:300]) from None


def _from_fields(path: Path, K_field: tuple[str, np.ndarray | None], dist: np.ndarray | None, model: Any,
                 fisheye_flag: Any, stated: tuple | None, width: int | None, height: int | None) -> Intrinsics:
    """Intrinsics from a calibration's fields: K (9 numbers) and its field name, distortion coefficients,
    ``distortion_model`` (ROS), ``fisheye_model`` (OpenCV's calibration sample: 1 for ``cv::fisheye``), the size it
    states (else ``width × height``)."""
    name, K = K_field
    if K is None:
        raise ValueError(f"intrinsics file {path} holds no camera matrix ('{name}'); {_SUPPORTED_FORMATS}")
    if K.size != 9:
        raise ValueError(f"intrinsics file {path}: expected a 3x3 '{name}', got {K.size} values")
    model = "" if model is None else str(model).strip().lower()
    if model not in _FISHEYE_MODELS + _OPENCV_MODELS:
        raise ValueError(f"intrinsics file {path}: distortion_model {model!r} is not supported; expected one of "
                         f"{_FISHEYE_MODELS + _OPENCV_MODELS[1:]}")
    distortion = _distortion(path, dist, model, fisheye_flag)
    w, h = stated or (width, height)
    if w is None or h is None:
        raise MissingImageSize(f"intrinsics file {path} has no image_width/image_height; pass the image size")
    return Intrinsics.from_matrix(K.reshape(3, 3), w, h, distortion)


def _distortion(path: Path, dist: np.ndarray | None, model: str, fisheye_flag: Any) -> dict | None:
    """The distortion dict of a file's coefficients and the model it names (``model``: lower case, "" for none).
    A fisheye lens keeps all-zero coefficients (its equidistant projection θd = θ is no pinhole). Four coefficients
    without a model are OpenCV's pinhole k1 k2 p1 p2 or ``cv2.fisheye``'s k1..k4 (its calibrate() returns four):
    refused rather than guessed."""
    fisheye = model in _FISHEYE_MODELS or (not model and _flag(path, fisheye_flag))
    if fisheye:
        return {"model": "fisheye", "coeffs": [0.0] * 4 if dist is None or not dist.size else dist.tolist()}
    if dist is None or not np.any(dist):
        return None
    if not model and fisheye_flag is None and dist.size == 4:
        raise ValueError(f"intrinsics file {path}: 4 distortion coefficients and no distortion_model: pinhole "
                         f"k1 k2 p1 p2 or fisheye k1..k4? add 'distortion_model: plumb_bob' or 'distortion_model: "
                         f"fisheye' (or fisheye_model: 0 or 1)")
    return {"model": "opencv", "coeffs": dist.tolist()}


def _flag(path: Path, value: Any) -> bool:
    """``fisheye_model``: absent, 0 or 1 (OpenCV's calibration sample writes its ``useFisheye`` setting)."""
    if value is None or value in (0, 1) and not isinstance(value, str):
        return bool(value)
    raise ValueError(f"intrinsics file {path}: 'fisheye_model' must be 0 or 1, got {value!r}")


def _read_text_matrix(path: Path, text: str, width: int | None, height: int | None) -> Intrinsics:
    tokens = [t for t in re.split(r"[,\s;\[\]]+", text) if t]
    try:
        values = np.asarray([float(t) for t in tokens], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"intrinsics file {path}: expected 9 numbers (3x3 K) or 4 (fx fy cx cy), found a "
                         f"non-number ({exc}); {_SUPPORTED_FORMATS}") from None
    if values.size not in (9, 4):
        raise ValueError(f"intrinsics file {path}: expected 9 numbers (3x3 K) or 4 (fx fy cx cy), got {values.size}")
    if width is None or height is None:
        raise MissingImageSize(f"intrinsics file {path} holds no image size; pass width and height")
    if values.size == 9:
        return Intrinsics.from_matrix(values.reshape(3, 3), width, height)
    return Intrinsics(*values.tolist(), width=width, height=height)


#: keys every camera of a Kalibr camchain has (and OpenCV / ROS files do not)
_KALIBR_KEYS = (re.compile(r"^\s*camera_model\s*:", re.M), re.compile(r"^\s*intrinsics\s*:", re.M))


def _read_kalibr(path: Path, text: str) -> Intrinsics:
    """A Kalibr camchain (``cam0: {camera_model, intrinsics: [fu, fv, pu, pv], distortion_model, distortion_coeffs,
    resolution: [w, h]}``; Kalibr wiki "Yaml formats") holding one camera, or that camera's mapping alone. Kalibr's
    pixel centres are at integer coordinates, as OpenCV's (COLMAP doc/faq.rst); ``radtan`` is OpenCV's k1 k2 p1 p2
    and ``equidistant`` its fisheye k1..k4."""
    data = _plain_yaml(text)
    if data is None:
        raise ValueError(f"intrinsics file {path} is not valid YAML (read as a Kalibr camchain)")
    cams = {"": data} if "intrinsics" in data else \
        {str(k): v for k, v in data.items() if isinstance(v, dict) and "intrinsics" in v}
    if len(cams) != 1:
        raise ValueError(f"intrinsics file {path} is a Kalibr camchain with {len(cams)} cameras {sorted(cams)}; "
                         f"save the camera that filmed the frames as a camchain of its own")
    name, cam = next(iter(cams.items()))
    field = f"{name}." if name else ""
    camera_model = str(cam.get("camera_model", "")).strip().lower()
    if camera_model != "pinhole":
        raise ValueError(f"intrinsics file {path}: Kalibr {field}camera_model {camera_model!r} is not supported; "
                         f"expected 'pinhole' (intrinsics [fu, fv, pu, pv])")
    intr = _numbers(path, f"{field}intrinsics", cam.get("intrinsics") or [])
    size = _numbers(path, f"{field}resolution", cam.get("resolution") or [])
    coeffs = _numbers(path, f"{field}distortion_coeffs", cam.get("distortion_coeffs") or [])
    if intr.size != 4 or size.size != 2:
        raise ValueError(f"intrinsics file {path}: Kalibr {field}intrinsics must be [fu, fv, pu, pv] and "
                         f"{field}resolution [width, height], got {intr.tolist()} and {size.tolist()}")
    model = str(cam.get("distortion_model", "none")).strip().lower()
    if model not in ("radtan", "equidistant", "none"):
        raise ValueError(f"intrinsics file {path}: Kalibr {field}distortion_model {model!r} is not supported; "
                         f"expected radtan, equidistant or none")
    distortion = None if model == "none" else _distortion(path, coeffs, model, None)
    fu, fv, pu, pv = intr.tolist()
    return Intrinsics(fu, fv, pu, pv, *size.tolist(), distortion=distortion)


#: a camera line of COLMAP's cameras.txt: CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]
_COLMAP_LINE = re.compile(r"^[ \t]*\d+[ \t]+[A-Z][A-Z_]*[ \t]+\d+[ \t]+\d+[ \t]+\S", re.M)
#: COLMAP model → (focal lengths: 1 or 2, distortion model, its coefficients in COLMAP's order); each maps onto
#: OpenCV's (src/colmap/sensor/models.h: SIMPLE_RADIAL's radial term k·r², the fisheye models' θ(1 + k1θ² + ...))
_COLMAP_MODELS = {"SIMPLE_PINHOLE": (1, None, 0), "PINHOLE": (2, None, 0), "SIMPLE_RADIAL": (1, "opencv", 1),
                  "RADIAL": (1, "opencv", 2), "OPENCV": (2, "opencv", 4), "FULL_OPENCV": (2, "opencv", 8),
                  "SIMPLE_FISHEYE": (1, "fisheye", 0), "FISHEYE": (2, "fisheye", 0),
                  "SIMPLE_RADIAL_FISHEYE": (1, "fisheye", 1), "RADIAL_FISHEYE": (1, "fisheye", 2),
                  "OPENCV_FISHEYE": (2, "fisheye", 4)}


def _read_colmap(path: Path, text: str) -> Intrinsics:
    """COLMAP's ``cameras.txt`` with one camera (or several identical ones). COLMAP puts the centre of the top-left
    pixel at (0.5, 0.5) (doc/cameras.rst, doc/faq.rst), OpenCV at (0, 0): its cx, cy are 0.5 px larger."""
    cams = set()
    for line in text.splitlines():
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        try:
            cams.add((tokens[1], int(tokens[2]), int(tokens[3]), tuple(float(t) for t in tokens[4:])))
        except (IndexError, ValueError):
            raise ValueError(f"intrinsics file {path}: not a COLMAP camera line 'CAMERA_ID MODEL WIDTH HEIGHT "
                             f"PARAMS': {line.strip()[:80]!r}") from None
    if len(cams) != 1:
        raise ValueError(f"intrinsics file {path} (COLMAP cameras.txt) holds {len(cams)} different cameras; keep "
                         f"the line of the camera that filmed the frames")
    model, width, height, params = cams.pop()
    if model not in _COLMAP_MODELS:
        raise ValueError(f"intrinsics file {path}: COLMAP camera model {model} is not supported; expected one of "
                         f"{', '.join(_COLMAP_MODELS)}")
    focals, dist_model, n_dist = _COLMAP_MODELS[model]
    if len(params) != focals + 2 + n_dist:
        raise ValueError(f"intrinsics file {path}: COLMAP {model} takes {focals + 2 + n_dist} parameters, got "
                         f"{len(params)}")
    fx, fy = params[0], params[focals - 1]
    cx, cy = params[focals] - 0.5, params[focals + 1] - 0.5
    coeffs = list(params[focals + 2:]) + [0.0] * (4 - n_dist)  # k1[, k2] → k1 k2 0 0 (p1 p2 or k3 k4)
    distortion = {"model": dist_model, "coeffs": coeffs} if dist_model == "fisheye" or any(coeffs) else None
    return Intrinsics(fx, fy, cx, cy, width, height, distortion)
