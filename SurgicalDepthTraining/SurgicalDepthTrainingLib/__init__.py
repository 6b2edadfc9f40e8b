"""SurgicalDepthTrainingLib: synthetic surgical scenes, dataset loaders, losses, metrics, training, evaluation.

``import SurgicalDepthTrainingLib as sdt``. Depends on SurgicalDepthLib, never the reverse. Submodules are imported
on first attribute access (PEP 562).
"""
from __future__ import annotations

import importlib
from typing import Any

from SurgicalDepthLib import __version__  # one version for the whole distribution (pyproject reads it there)

_EXPORTS: dict[str, str] = {
    # synthetic scenes
    "SceneGenerator": "synthetic",
    "SceneConfig": "synthetic",
    "render_clip": "synthetic",
    "write_synthetic": "synthetic",
    "ORGANS": "synthetic",
    "contact_sheet": "synthetic",
    # datasets
    "open_dataset": "datasets",
    "DATASETS": "datasets",
    "list_datasets": "datasets",
    "collate_samples": "datasets",
    # metrics and losses
    "depth_metrics": "metrics",
    "compute_errors": "metrics",
    "align_prediction": "metrics",
    "mean_metrics": "metrics",
    "l1_loss": "losses",
    "silog_loss": "losses",
    "ssi_loss": "losses",
    # training and evaluation
    "TrainConfig": "training",
    "TrainingStopped": "training",
    "TrainingDiverged": "training",
    "train": "training",
    "evaluate": "evaluation",
    "evaluate_predictions": "evaluation",
    "write_report": "reports",
    "read_report": "reports",
    "markdown_table": "reports",
    "qualitative_figure": "reports",
    "run_demo": "demo",
    "DemoConfig": "demo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'SurgicalDepthTrainingLib' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
