"""Writing evaluation results: JSON reports, a Markdown table in the layout of the paper's Table 1, and a
qualitative figure (RGB | ground truth | prediction; red = near, blue = far). Every file is written atomically."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from SurgicalDepthLib.atomic_io import atomic_path
from SurgicalDepthLib.video import write_image

TABLE_ROWS = (("abs_rel", "AbsRel ↓"), ("a1", "δ1 ↑"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None  # strict JSON has no NaN/Infinity
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``report`` as indented strict JSON (numpy values converted; NaN/inf -> null), atomically."""
    path = Path(path)
    text = json.dumps(_jsonable(report), indent=2, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read a report written by :func:`write_report` for ``evaluate`` (architecture.md, "Evaluation report").

    Raises:
        FileNotFoundError: no such file.
        ValueError: (naming the file and the field) not UTF-8 JSON, not an object, or without what a report has
            and :func:`markdown_table` reads: ``dataset`` (a string), ``split`` (a string or null, if present) and
            ``metrics`` (an object of numbers or nulls).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report {path} does not exist")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON report ({exc})") from None
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise ValueError(f"{path}: not an evaluation report (no 'metrics' object)")
    for key, value in report["metrics"].items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{path}: metric {key!r} is {value!r}, expected a number or null")
    if not isinstance(report.get("dataset"), str):
        raise ValueError(f"{path}: field 'dataset' is {report.get('dataset')!r}, expected the dataset's name")
    if report.get("split") is not None and not isinstance(report["split"], str):
        raise ValueError(f"{path}: field 'split' is {report['split']!r}, expected a string or null")
    return report


def markdown_table(reports_by_model: Mapping[str, Iterable[Mapping[str, Any]]], digits: int = 3) -> str:
    """Markdown table laid out like the paper's Table 1: one column per dataset (and split, e.g. the EndoSLAM
    organs), two rows per model (AbsRel ↓ and δ1 ↑); a model without a report for a dataset shows "–".

    Args:
        reports_by_model: ``{model label: [report, ...]}`` (reports as returned by ``evaluate``).
    """
    cells: dict[str, dict[str, Mapping[str, Any]]] = {}
    datasets: list[str] = []
    for model, reports in reports_by_model.items():
        cells[model] = {}
        for report in reports:
            name = str(report["dataset"]) + (f" {report['split']}" if report.get("split") else "")
            if name not in datasets:
                datasets.append(name)
            cells[model][name] = report["metrics"]
    if not cells:
        raise ValueError("markdown_table: no models given")
    lines = ["| Model | Metric | " + " | ".join(datasets) + " |",
             "|---|---|" + "---:|" * len(datasets)]
    for model, per_dataset in cells.items():
        for key, label in TABLE_ROWS:
            values = [f"{per_dataset[d][key]:.{digits}f}" if d in per_dataset and per_dataset[d].get(key)
                      is not None else "–" for d in datasets]
            lines.append(f"| {model} | {label} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_table(text: str, path: str | os.PathLike) -> Path:
    """Write Markdown text atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def label_tile(tile: np.ndarray, text: str) -> np.ndarray:
    """A copy of RGB uint8 ``tile`` with ``text`` written in its top-left corner (white on a black outline)."""
    import cv2

    out = tile.copy()
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    cv2.rectangle(out, (0, 0), (min(out.shape[1], w + 12), h + 12), (0, 0, 0), -1)  # legible on any image
    cv2.putText(out, text, (6, h + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def qualitative_figure(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """PNG grid, one row per image: RGB | ground truth | prediction, coloured with
    :func:`SurgicalDepthLib.colormap.colorize` (red = near, blue = far) on one colour scale per row (the ground
    truth's robust range), so prediction and ground truth colours are comparable.

    Args:
        rows: dicts with ``image`` uint8 [H, W, 3] RGB, ``gt`` float [H, W] depth, ``pred`` float [H, W] depth
            in the unit of ``gt`` (already aligned, e.g. by :func:`~.metrics.align_prediction`), optional
            ``valid`` bool [H, W] and ``name``.
        path: ``.png`` file.
    """
    import cv2
    from SurgicalDepthLib.colormap import colorize, robust_range

    if not rows:
        raise ValueError("qualitative_figure: no rows")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"qualitative_figure writes PNG; got {path.name!r}")
    width = 320
    tiles = []
    for i, row in enumerate(rows):
        image, gt, pred = np.asarray(row["image"]), np.asarray(row["gt"]), np.asarray(row["pred"])
        if image.shape[:2] != gt.shape or pred.shape != gt.shape:
            raise ValueError(f"row {i}: image {image.shape}, gt {gt.shape} and pred {pred.shape} differ in size")
        valid = row.get("valid")
        vmin, vmax = robust_range(gt, "depth", masks=[valid])
        h = max(1, round(gt.shape[0] * width / gt.shape[1]))
        panels = [(image, "RGB"), (colorize(gt, "depth", vmin, vmax, mask=valid), "ground truth"),
                  (colorize(pred, "depth", vmin, vmax), "prediction")]
        resized = [label_tile(cv2.resize(np.ascontiguousarray(p), (width, h), interpolation=cv2.INTER_AREA),
                          label if j else f"{label} {row.get('name', '')}"[:40]) for j, (p, label) in enumerate(panels)]
        tiles.append(np.concatenate(resized, axis=1))
    grid = np.concatenate(tiles, axis=0)
    return write_image(path, grid)
