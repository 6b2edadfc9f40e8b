"""What a checkpoint says about itself beyond its tensor shapes: its file name (the official releases' names state
version, head and metric range), the format of the official metric training script, the files beside a Hugging
Face folder's weights, and the layout of the one official release that this project does not implement.

Facts from DepthAnything/Depth-Anything-V2 (``README.md`` and ``metric_depth/README.md``: file names; Hypersim
models ``max_depth`` 20 m, Virtual KITTI 80 m; ``metric_depth/train.py``: its checkpoint dict) and
LiheYoung/Depth-Anything (``metric_depth/``: the V1 metric models are ZoeDepth, keys of ``zoedepth_v1.py``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

#: official file names, which state the version (V2: depth_anything_v2_vits.pth; V1: depth_anything_vits14.pth)
_OFFICIAL_NAMES = {"v2": r"depth_anything_v2", "v1": r"depth_anything_vit[stblg]14|depth_anything_v1"}
#: a bare version token in any other name (my_model_v2.pth): a default that an explicit version= overrides
_VERSION_TOKENS = {"v2": r"(^|[^a-z])v2([^a-z0-9]|$)", "v1": r"(^|[^a-z])v1([^a-z0-9]|$)"}
#: the official relative releases' whole file stems (a browser's " (1)" copy suffix allowed): relative heads
_OFFICIAL_RELATIVE = re.compile(r"(depth_anything_v2_vit[sblg]|depth_anything_vit[sbl]14)( ?\(\d+\))?")
#: official V2 metric range per training set, in metres (metric_depth/README.md: 20 indoor, 80 outdoor)
METRIC_MAX_DEPTH = {"hypersim": 20.0, "vkitti": 80.0}


def version_from_name(name: str) -> tuple[str | None, bool]:
    """``(version, official)`` read from a file name: an official name's version (``official`` True), else a bare
    version token's; None where the name says nothing, or both versions."""
    n = name.lower().replace("-", "_")
    for patterns, official in ((_OFFICIAL_NAMES, True), (_VERSION_TOKENS, False)):
        found = [v for v, pattern in patterns.items() if re.search(pattern, n)]
        if len(found) == 1:
            return found[0], official
        if found:
            return None, False
    return None, False


def head_from_name(name: str) -> str | None:
    """``"metric"`` where the file name says so, ``"relative"`` for an official relative release's exact name
    (``depth_anything_v2_vits.pth``, ``depth_anything_vitl14.pth``), else None."""
    n = Path(name).stem.lower().replace("-", "_")
    if "metric" in n:
        return "metric"
    return "relative" if _OFFICIAL_RELATIVE.fullmatch(n) else None


def max_depth_from_name(name: str) -> float | None:
    """The official metric range (metres) that a name's training set implies (hypersim 20, vkitti 80), else None."""
    n = name.lower()
    return next((depth for data, depth in METRIC_MAX_DEPTH.items() if data in n), None)


def is_official_metric_training(obj: Any) -> bool:
    """Whether a loaded ``.pth`` is a checkpoint of the official ``metric_depth/train.py`` (``{"model",
    "optimizer", "epoch", "previous_best"}``, ``previous_best`` holding its metric ``silog``): a V2 metric model
    whose ``max_depth`` (a command-line argument of the script) is not recorded."""
    return (isinstance(obj, dict) and isinstance(obj.get("model"), dict)
            and isinstance(obj.get("previous_best"), dict) and "silog" in obj["previous_best"])


#: key fragments of ZoeDepth (the V1 metric release): the wrapped relative model and the metric-bins head
_ZOEDEPTH_KEYS = re.compile(r"(^|\.)(core\.core\.pretrained\.|seed_bin_regressor\.|attractors\.|"
                            r"conditional_log_binomial\.)")


def is_zoedepth(keys: Any) -> bool:
    """Whether state-dict ``keys`` are ZoeDepth's (Depth Anything V1's metric models)."""
    return any(_ZOEDEPTH_KEYS.search(k) for k in keys)


ZOEDEPTH_MESSAGE = ("a Depth Anything V1 metric model (ZoeDepth: a metric-bins head on the V1 encoder, keys "
                    "core.core.*, seed_bin_regressor.*, attractors.*), which this project does not implement; use a "
                    "V2 metric model (depth-anything-v2-metric-hypersim-small, ...-vkitti-small, ...) instead")

#: files of a Hugging Face folder that hold its model (single file, shards and their index)
_HF_WEIGHTS = re.compile(r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?")
#: files of a transformers Trainer checkpoint beside the model (optimizer and scheduler state, RNG, arguments)
_TRAINER_STATE = re.compile(r"(optimizer|scheduler|scaler)\.pt|rng_state(_\d+)?\.pth|training_args\.bin")
#: suffixes of model files that a folder source would leave unread
_MODEL_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".bin")


def other_model_files(folder: Path) -> list[str]:
    """Names of the model files in ``folder`` that are not a Hugging Face folder's weights or Trainer state
    (e.g. an official ``.pth`` downloaded beside the ``-hf`` folder), sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _MODEL_SUFFIXES
                  and not _HF_WEIGHTS.fullmatch(p.name) and not _TRAINER_STATE.fullmatch(p.name))
