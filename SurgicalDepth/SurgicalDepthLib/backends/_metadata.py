"""What an exported graph carries about itself, so that it loads alone: the model config, the preprocessing (input
size, mean/std), the output's kind and unit, the weights it came from and its precision.

Stored as string key/value pairs: ONNX ``metadata_props`` (keys ``surgical_depth.<name>``) and OpenVINO runtime
info (``rt_info`` path ``["surgical_depth", <name>]``; an ``.onnx`` file read by OpenVINO shows its
``metadata_props`` under ``["framework", "surgical_depth.<name>"]``).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from ..configs import ModelConfig

#: version of this metadata layout; a reader refuses files of a newer layout
FORMAT_VERSION = "1"
#: precisions an ONNX graph is written in (ONNX Runtime's CPU provider has no bfloat16 convolution)
ONNX_PRECISIONS = ("fp32", "fp16")
PREFIX = "surgical_depth."
INPUT_NAME, OUTPUT_NAME = "image", "depth"
INPUT_DOC = ("image: float32 [N, 3, H, W], RGB / 255 normalised with mean and std, H and W multiples of the patch "
             "size (the official preprocessing: keep aspect, both sides >= input_size, bicubic)")
OUTPUT_DOC = "depth: float32 [N, H, W], output_kind in depth_unit at the network input size"


def output_resize_doc(version: str) -> str:
    """How the output is resized to the frame, as each release's code (and ``infer_image``) does it: V1 and V2
    differ in ``align_corners`` (:func:`~SurgicalDepthLib.model.resize_prediction`)."""
    return f"bilinear to the frame's H x W, align_corners={'true' if version == 'v2' else 'false'}"


def graph_metadata(config: ModelConfig, source: str, precision: str) -> dict[str, str]:
    """The metadata of an exported graph (names without :data:`PREFIX`)."""
    from .. import __version__

    return {
        "format_version": FORMAT_VERSION,
        "config": json.dumps(config.to_dict(), sort_keys=True),
        "input_size": str(config.input_size),
        "patch_size": str(config.patch_size),
        "mean": json.dumps(list(config.mean)),
        "std": json.dumps(list(config.std)),
        "output_kind": config.output_kind,
        "depth_unit": "relative" if config.head == "relative" else config.metric_unit,
        "source": source,
        "precision": precision,
        "input": INPUT_DOC,
        "output": OUTPUT_DOC,
        "output_resize": output_resize_doc(config.version),
        "package_version": __version__,
    }


def read_metadata(get: Callable[[str], str | None], where: str) -> tuple[ModelConfig, str, str]:
    """``(config, source, precision)`` from an exported graph.

    Args:
        get: returns the value of a metadata name (without :data:`PREFIX`), or None when absent.
        where: the file, named in errors.
    Raises:
        ValueError: no SurgicalDepth metadata, a newer layout, or a config that does not validate.
    """
    version = get("format_version")
    if version is None or get("config") is None:
        raise ValueError(f"{where} has no SurgicalDepth metadata (model config, preprocessing): only graphs "
                         "written by 'surgical-depth export' load alone")
    if version != FORMAT_VERSION:
        raise ValueError(f"{where} has SurgicalDepth metadata version {version!r}; this version reads "
                         f"{FORMAT_VERSION!r} (update surgical-depth)")
    try:
        config = ModelConfig.from_dict(json.loads(get("config")))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: invalid model config in its metadata: {exc}") from None
    return config, get("source") or where, get("precision") or "fp32"


def prefixed(meta: Mapping[str, str]) -> dict[str, str]:
    return {PREFIX + key: value for key, value in meta.items()}
