"""Pure-Python helpers of the Surgical Depth Training Slicer module (no ``slicer``/``qt``/``ctk``/``mrml``).

The module runs ``surgical-depth synth|train|evaluate`` as a separate process (so a crash or a CUDA
out-of-memory error cannot take Slicer down, and several GPUs can be used through ``torchrun``); these functions
build those command lines and read the progress the process reports.

Progress sources (both read, whichever the training writes):
- log lines containing ``epoch E/N`` (and optionally ``step S/M``) followed by ``key=value`` or ``key: value``
  pairs, e.g. ``epoch 3/10 step 40/120 loss=0.1234 lr=1e-4``;
- the per-epoch history CSV in the output folder (header row, one row per epoch, e.g.
  ``epoch,train_loss,val_abs_rel``).
"""
from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

DATASET_NAMES = ("synthetic", "colondepth", "endoslam", "c3vd", "simcol3d", "scared", "hamlyn", "servct", "liit",
                 "folder")
LOSSES = ("ssi", "silog", "l1")
ALIGNMENTS = ("median", "scale_shift", "none")
METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
CLI_MODULE = "SurgicalDepthTrainingLib"  # python -m: full CLI, no installed entry point needed (Slicer)

_EPOCH = re.compile(r"\bepoch\s*[:=]?\s*(\d+)\s*/\s*(\d+)", re.IGNORECASE)
_STEP = re.compile(r"\b(?:step|iter|batch)\s*[:=]?\s*(\d+)\s*/\s*(\d+)", re.IGNORECASE)
_PAIR = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)\s*[=:]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)\b")


@dataclass(frozen=True)
class TrainRecipe:
    """The training settings the panel exposes (names mirror ``surgical-depth train`` flags)."""

    dataset: str
    root: str
    output: str
    model: str = "default"
    loss: str = "l1"
    lr: float = 3e-5
    batch_size: int = 16
    epochs: int = 10
    input_size: int = 518
    lora_rank: int = 0
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"dataset must be one of {DATASET_NAMES}, got {self.dataset!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("root", "output"):
            if not str(getattr(self, name)).strip() or str(getattr(self, name)).strip() == ".":
                raise ValueError(f"{name} folder is empty; choose a folder")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("batch_size", "epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.input_size < 14 or self.input_size % 14:
            raise ValueError(f"input_size must be a positive multiple of 14, got {self.input_size!r}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = full fine-tuning), got {self.lora_rank!r}")


def train_command(python: str, recipe: TrainRecipe, n_gpus: int = 1, resume: bool = False) -> list[str]:
    """argv of ``surgical-depth train`` for ``recipe`` run by ``python`` (Slicer: ``PythonSlicer``).

    ``n_gpus > 1`` launches it through ``python -m torch.distributed.run --nproc_per_node N -m ...`` (torchrun).
    """
    if int(n_gpus) < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus!r}")
    args = ["train", "--dataset", recipe.dataset, "--root", str(recipe.root), "--output", str(recipe.output),
            "--model", recipe.model, "--loss", recipe.loss, "--lr", repr(float(recipe.lr)),
            "--batch-size", str(int(recipe.batch_size)), "--epochs", str(int(recipe.epochs)),
            "--input-size", str(int(recipe.input_size))]
    if recipe.lora_rank > 0:
        args += ["--lora", str(int(recipe.lora_rank))]
    if recipe.freeze_encoder:
        args.append("--freeze-encoder")
    if resume:
        args.append("--resume")
    if n_gpus > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(n_gpus)}",
                "-m", CLI_MODULE, *args]
    return [python, "-m", CLI_MODULE, *args]


def synth_command(python: str, output: str, frames: int = 64, seed: int = 0, organ: str | None = None) -> list[str]:
    """argv of ``surgical-depth synth`` writing a synthetic dataset into ``output``."""
    if int(frames) < 1:
        raise ValueError(f"frames must be >= 1, got {frames!r}")
    cmd = [python, "-m", CLI_MODULE, "synth", "--output", str(output), "--frames", str(int(frames)),
           "--seed", str(int(seed))]
    if organ:
        cmd += ["--organ", organ]
    return cmd


def evaluate_command(python: str, dataset: str, root: str, model: str, output_json: str,
                     alignment: str = "median") -> list[str]:
    """argv of ``surgical-depth evaluate`` writing its JSON report to ``output_json``."""
    if dataset not in DATASET_NAMES:
        raise ValueError(f"dataset must be one of {DATASET_NAMES}, got {dataset!r}")
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    return [python, "-m", CLI_MODULE, "evaluate", "--dataset", dataset, "--root", str(root), "--model", str(model),
            "--alignment", alignment, "--output", str(output_json)]


def pythonpath_with(folders: Sequence[str | os.PathLike], existing: str | None = None) -> str:
    """``PYTHONPATH`` value with ``folders`` first (deduplicated, order kept), then ``existing`` entries."""
    parts: list[str] = []
    for p in [*(str(f) for f in folders), *((existing or "").split(os.pathsep))]:
        if p and p not in parts:
            parts.append(p)
    return os.pathsep.join(parts)


def parse_progress_line(line: str) -> dict[str, float] | None:
    """Progress fields of one training log line, or None when it carries no ``epoch E/N``.

    Returns ``{"epoch": E, "epochs": N[, "step": S, "steps": M], <key>: float, ...}`` (every ``key=value`` /
    ``key: value`` number on the line).
    """
    m = _EPOCH.search(line)
    if m is None:
        return None
    out: dict[str, float] = {"epoch": int(m.group(1)), "epochs": int(m.group(2))}
    s = _STEP.search(line)
    if s is not None:
        out["step"], out["steps"] = int(s.group(1)), int(s.group(2))
    for key, value in _PAIR.findall(line):
        if key.lower() not in ("epoch", "step", "iter", "batch"):
            out[key] = float(value)
    return out


def progress_percent(progress: dict[str, float]) -> int:
    """Overall completion 0–100 from a :func:`parse_progress_line` result (epochs counted from 1)."""
    epochs = max(1, int(progress["epochs"]))
    done = max(0, int(progress["epoch"]) - 1)
    frac = 0.0
    if progress.get("steps"):
        frac = min(1.0, max(0.0, progress["step"] / progress["steps"]))
    elif int(progress["epoch"]) >= 1:
        frac = 1.0  # an epoch line without steps reports a finished epoch
    return int(round(100 * min(1.0, (done + frac) / epochs)))


def read_history_csv(path: str | os.PathLike) -> dict[str, list[float]]:
    """Columns of the per-epoch history CSV as float lists (a missing cell → NaN). Missing file → {}."""
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns: dict[str, list[float]] = {name: [] for name in (reader.fieldnames or [])}
        for row in reader:
            for name in columns:
                cell = (row.get(name) or "").strip()
                try:
                    columns[name].append(float(cell))
                except ValueError:
                    columns[name].append(float("nan"))
    return columns


def metric_rows(report: dict) -> list[tuple[str, str]]:
    """``(metric, value text)`` rows of an evaluation report's ``metrics`` (architecture.md order first)."""
    metrics = report.get("metrics")
    if not isinstance(metrics, dict):
        raise ValueError(f"evaluation report has no 'metrics' object; keys: {sorted(report)}")
    names = [k for k in METRIC_KEYS if k in metrics] + sorted(k for k in metrics if k not in METRIC_KEYS)
    return [(k, f"{float(metrics[k]):.4f}") for k in names]


def plot_columns(history: dict[str, list[float]]) -> tuple[str | None, list[str]]:
    """``(x column, y columns)`` to plot: x is ``epoch`` when present; y are loss and AbsRel-like columns."""
    x = "epoch" if "epoch" in history else None
    wanted = [c for c in history if c != x and ("loss" in c.lower() or "abs_rel" in c.lower())]
    return x, wanted


def last_lines(lines: Iterable[str], n: int = 20) -> list[str]:
    """The last ``n`` non-empty lines (for the error message of a failed process)."""
    kept = [ln.rstrip() for ln in lines if ln.strip()]
    return kept[-n:]


#: file names the panel looks for in a training output folder, in order of preference
HISTORY_NAMES = ("history.csv", "metrics.csv", "log.csv")
FIGURE_PATTERNS = ("qualitative*.png", "figure*.png", "summary*.png", "*.png")


def find_history(folder: str | os.PathLike) -> Path | None:
    """The per-epoch history CSV of a training output folder (first of :data:`HISTORY_NAMES`), or None."""
    for name in HISTORY_NAMES:
        path = Path(folder) / name
        if path.is_file():
            return path
    return None


def find_figure(folder: str | os.PathLike) -> Path | None:
    """The qualitative figure PNG of an output folder (first pattern of :data:`FIGURE_PATTERNS` that matches;
    newest file within it), or None."""
    for pattern in FIGURE_PATTERNS:
        matches = sorted(Path(folder).glob(pattern), key=lambda p: (p.stat().st_mtime, p.name))
        if matches:
            return matches[-1]
    return None
