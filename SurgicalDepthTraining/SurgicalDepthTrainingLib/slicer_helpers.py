"""Pure-Python helpers of the Surgical Depth Training Slicer module (no ``slicer``/``qt``/``ctk``/``mrml``).

The module runs ``surgical-depth synth|train|evaluate --progress jsonl`` as a separate process (a crash or a CUDA
out-of-memory error cannot take Slicer down; ``torchrun`` can use several GPUs); these functions build those command
lines and read what the process reports:

- progress: the JSON lines of its stdout (:mod:`SurgicalDepthLib.progress`), turned into one percentage and a
  status text by :class:`ProgressTracker`;
- the loss / AbsRel history: ``log.csv`` in the training output folder (``epoch, step, loss, val_abs_rel, val_a1,
  lr``; a row per validation or ``--log-every`` steps, validation cells empty on the other rows).

Importing this module is cheap (no torch): the registries (datasets, losses) are read when a command is built.
"""
from __future__ import annotations

import codecs
import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from SurgicalDepthLib.progress import STAGES
from SurgicalDepthLib.slicer_helpers import model_source

from .commands.train import STOPPING_NOTE  # noqa: F401  (the module watches stderr for it)

CLI_MODULE = "SurgicalDepthTrainingLib"  # python -m: full CLI, no installed entry point needed (Slicer)
PROGRESS_ARGS = ("--progress", "jsonl")  # every command the module runs reports JSON lines on stdout


def dataset_names() -> tuple[str, ...]:
    """Names of the dataset registry (:func:`.datasets.list_datasets`)."""
    from .datasets import list_datasets
    return tuple(list_datasets())


def loss_names() -> tuple[str, ...]:
    """Names of the training losses (:data:`.loss_names.LOSS_NAMES`, the keys of :data:`.losses.LOSSES`)."""
    from .loss_names import LOSS_NAMES
    return LOSS_NAMES


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {tuple(choices)}, got {value!r}")


@dataclass(frozen=True)
class TrainRecipe:
    """The training settings the panel exposes (names mirror ``surgical-depth train`` flags). A setting left at
    None is not passed, so the train command's default applies (``TrainConfig``'s, the one place they are defined).
    ``input_size``: ``(height, width)`` of the training crop in pixels, multiples of 14 (the ViT patch)."""

    dataset: str
    root: str
    output: str
    model: str | None = None
    loss: str | None = None
    lr: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    input_size: tuple[int, int] | None = None
    lora_rank: int = 0
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        _check_choice("dataset", self.dataset, dataset_names())
        if self.loss is not None:
            _check_choice("loss", self.loss, loss_names())
        for name in ("root", "output"):
            if not str(getattr(self, name)).strip() or str(getattr(self, name)).strip() == ".":
                raise ValueError(f"{name} folder is empty; choose a folder")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("batch_size", "epochs"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.input_size is not None:
            if len(self.input_size) != 2 or any(int(v) < 14 or int(v) % 14 for v in self.input_size):
                raise ValueError(f"input_size must be (height, width), positive multiples of 14, "
                                 f"got {self.input_size!r}")
            object.__setattr__(self, "input_size", (int(self.input_size[0]), int(self.input_size[1])))
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = full fine-tuning), got {self.lora_rank!r}")

    def flags(self) -> list[str]:
        """The ``surgical-depth train`` flags of this recipe (settings left at None are left out)."""
        args = ["--dataset", self.dataset, "--root", str(self.root), "--output", str(self.output)]
        for flag, value in (("--model", self.model), ("--loss", self.loss), ("--lr", self.lr and repr(float(self.lr))),
                            ("--batch-size", self.batch_size), ("--epochs", self.epochs),
                            ("--lora", self.lora_rank or None)):
            if value is not None:
                args += [flag, str(value)]
        if self.input_size is not None:
            args += ["--input-size", *map(str, self.input_size)]
        return args + ["--freeze-encoder"] * bool(self.freeze_encoder)


#: what a run started from the panel does with an earlier run's results in its output folder: ``"keep"`` them (the
#: command refuses to start), ``"resume"`` an earlier training from its ``last.pt`` (``train --resume``), or
#: ``"replace"`` them (``--overwrite``: exactly the files the earlier run wrote; never a file it did not write)
EARLIER_RESULTS = ("keep", "resume", "replace")


def earlier_results_flags(command: str, earlier: str) -> list[str]:
    """The flags of ``surgical-depth COMMAND`` for the panel's choice ``earlier`` (:data:`EARLIER_RESULTS`):
    ``--resume`` (``train`` only), ``--overwrite`` (``train``, ``evaluate``, ``synth``: its earlier data set), or
    none."""
    _check_choice("earlier results", earlier, EARLIER_RESULTS)
    if earlier == "resume":
        return ["--resume"] if command == "train" else []
    return ["--overwrite"] if earlier == "replace" and command in ("train", "evaluate", "synth") else []


def train_command(python: str, recipe: TrainRecipe, n_gpus: int = 1, earlier: str = "keep") -> list[str]:
    """argv of ``surgical-depth train --progress jsonl`` for ``recipe`` run by ``python`` (Slicer: ``PythonSlicer``).

    ``n_gpus > 1`` launches it through ``python -m torch.distributed.run --nproc_per_node N -m ...`` (torchrun).
    ``earlier``: what it does with an earlier run in the output folder (:data:`EARLIER_RESULTS`).
    """
    if int(n_gpus) < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus!r}")
    args = ["train", *recipe.flags(), *earlier_results_flags("train", earlier), *PROGRESS_ARGS]
    if n_gpus > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(n_gpus)}",
                "-m", CLI_MODULE, *args]
    return [python, "-m", CLI_MODULE, *args]


def synth_command(python: str, output: str, frames: int = 64, seed: int = 0, organ: str | None = None,
                  earlier: str = "keep") -> list[str]:
    """argv of ``surgical-depth synth --progress jsonl`` writing a synthetic dataset into ``output``;
    ``earlier="replace"`` replaces a data set an earlier synth run wrote there."""
    if int(frames) < 1:
        raise ValueError(f"frames must be >= 1, got {frames!r}")
    cmd = [python, "-m", CLI_MODULE, "synth", "--output", str(output), "--frames", str(int(frames)),
           "--seed", str(int(seed))]
    if organ:
        cmd += ["--organ", organ]
    return [*cmd, *earlier_results_flags("synth", earlier), *PROGRESS_ARGS]


def evaluate_command(python: str, dataset: str, root: str, model: str, output_json: str,
                     alignment: str = "median", figure: str | None = None, earlier: str = "keep") -> list[str]:
    """argv of ``surgical-depth evaluate --progress jsonl`` writing its JSON report to ``output_json`` (and the
    qualitative figure PNG to ``figure`` when given); ``earlier="replace"`` replaces an earlier report and figure."""
    from .metrics import ALIGNMENTS

    _check_choice("dataset", dataset, dataset_names())
    _check_choice("alignment", alignment, ALIGNMENTS)
    cmd = [python, "-m", CLI_MODULE, "evaluate", "--dataset", dataset, "--root", str(root), "--model", str(model),
           "--alignment", alignment, "--output", str(output_json)]
    if figure is not None:
        cmd += ["--figure", str(figure)]
    return [*cmd, *earlier_results_flags("evaluate", earlier), *PROGRESS_ARGS]


def command_name(argv: Sequence[str]) -> str:
    """The ``surgical-depth`` sub-command of an argv built above (the word after ``-m SurgicalDepthTrainingLib``)."""
    args = list(argv)
    if CLI_MODULE not in args[:-1]:
        raise ValueError(f"not a '-m {CLI_MODULE} COMMAND' command line: {args!r}")
    return args[args.index(CLI_MODULE) + 1]


def base_model_source(choice: str, path: str | os.PathLike | None = None) -> str:
    """``--model`` of the base-model chooser: ``"default"``, a registry name, or ``path`` for ``"file"``."""
    return model_source("file", str(path or "")) if choice == "file" else choice


def pythonpath_with(folders: Sequence[str | os.PathLike], existing: str | None = None) -> str:
    """``PYTHONPATH`` value with ``folders`` first (deduplicated, order kept), then ``existing`` entries."""
    parts: list[str] = []
    for p in [*(str(f) for f in folders), *((existing or "").split(os.pathsep))]:
        if p and p not in parts:
            parts.append(p)
    return os.pathsep.join(parts)


_EVENTS = ("progress", "done", "error")
_PROGRESS_KEYS = ("event", "stage", "step", "total")
#: how the status text names the metrics of the progress lines
_METRIC_LABELS = {"loss": "loss", "val_abs_rel": "val AbsRel", "val_a1": "val δ1", "abs_rel": "AbsRel", "a1": "δ1",
                  "lr": "lr"}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_progress_line(line: str) -> dict[str, Any] | None:
    """The event of one stdout line of a ``--progress jsonl`` run, or None.

    Returns the parsed object for ``{"event": "progress", "stage": str, "step": int, "total": int|null, ...}``,
    ``{"event": "done", ...}`` and ``{"event": "error", "message": str}``; None for anything else: text that is not
    JSON (tqdm bars, log messages, a line cut short), other JSON, progress lines without a stage or step.
    Text before the first ``{`` is skipped, so a line that a progress bar written without a newline ran into still
    counts.
    """
    start = line.find("{")
    if start < 0:
        return None
    try:
        event = json.loads(line[start:])
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event") not in _EVENTS:
        return None
    if event["event"] == "progress":
        total = event.get("total")
        if not isinstance(event.get("stage"), str) or not _is_count(event.get("step")) \
                or not (total is None or _is_count(total)):
            return None
    return event


def _fraction(event: dict[str, Any]) -> float | None:
    """Finished share of the event's stage in [0, 1]; None when its total is unknown (null or 0)."""
    total = event.get("total")
    return min(1.0, max(0.0, event["step"] / total)) if total else None


def progress_percent(progress: dict[str, Any], stages: Sequence[str] | None = None) -> int:
    """Overall completion 0–100 of one :func:`parse_progress_line` event on its own: ``"done"`` → 100; a progress
    event → its stage's place among ``stages`` (a command's :data:`STAGES`, equal weights, earlier stages counted
    as finished; None or a stage not listed = the stage alone) plus ``step / total`` of that place (0 when the
    total is unknown); anything else → 0. Across a run's lines use :class:`ProgressTracker` (skipped stages,
    never back)."""
    if progress.get("event") == "done":
        return 100
    if progress.get("event") != "progress":
        return 0
    stages = list(stages) if stages and progress["stage"] in stages else [progress["stage"]]
    return int(100 * (stages.index(progress["stage"]) + (_fraction(progress) or 0.0)) / len(stages))


class ProgressTracker:
    """One run's JSON lines → a percentage that rises monotonically to 100, and a status text.

    The stages of ``command`` (:data:`SurgicalDepthLib.progress.STAGES`) weigh the same. A stage that a run skips
    (e.g. ``"render"``, which only ``train --recipe default`` has) is left out of the sum once a later stage
    starts; a stage not listed, a step without a known total, or a stage that comes back, hold the percentage.

    Attributes:
        percent: overall completion 0–100 (never decreases; 100 after ``done``).
        event: the latest progress event (None before the first).
        metrics: latest value of each metric of the current stage (``loss``, ``val_abs_rel``, ...).
        result: the fields of the ``done`` event (None before it); error: the message of an ``error`` event.
    """

    def __init__(self, command: str):
        if command not in STAGES:
            raise ValueError(f"command must be one of {sorted(STAGES)}, got {command!r}")
        self.command, self.stages = command, tuple(STAGES[command])
        self.percent, self.metrics = 0, {}
        self.event = self.result = self.error = None
        self._index = -1  # position of the current stage in self.stages
        self._ran = 0  # listed stages that ran before the current one
        self._skipped = 0  # listed stages before the current one that never ran

    def feed(self, line: str) -> int | None:
        """Read one stdout line; returns the percentage after it, or None when the line is no event."""
        event = parse_progress_line(line)
        if event is None:
            return None
        if event["event"] == "done":
            self.result = {k: v for k, v in event.items() if k != "event"}
            self.percent = 100
        elif event["event"] == "error":
            self.error = str(event.get("message", ""))
        else:
            self._progress(event)
        return self.percent

    def _progress(self, event: dict[str, Any]) -> None:
        if self.event is None or event["stage"] != self.event["stage"]:
            self.metrics = {}
        self.event = event
        self.metrics.update({k: v for k, v in event.items() if k not in _PROGRESS_KEYS and v is not None})
        if event["stage"] not in self.stages:
            return
        index = self.stages.index(event["stage"])
        if index < self._index:
            return
        if index > self._index:
            self._ran += self._index >= 0
            self._skipped, self._index = index - self._ran, index
        fraction = _fraction(event)
        if fraction is not None:
            # monotonic: moving on from stage i to stage j only shrinks the denominator (skipped stages)
            value = int(100 * (self._ran + fraction) / (len(self.stages) - self._skipped))
            self.percent = max(self.percent, min(100, value))

    def status(self) -> str:
        """What the run is doing, e.g. ``train: 40/120 · loss 0.1234 · val AbsRel 0.2100`` ("" before any event)."""
        if self.event is None:
            return ""
        total = self.event["total"]
        parts = [f"{self.event['stage']}: {self.event['step']}/{total if total is not None else '?'}"]
        parts += [f"{label} {self.metrics[key]:.4g}" for key, label in _METRIC_LABELS.items()
                  if isinstance(self.metrics.get(key), (int, float))]
        return " · ".join(parts)


def run_outcome(exit_code: int, crashed: bool, cancelled: bool) -> str:
    """``"cancelled"`` when the user cancelled (whatever the exit status: a terminated or killed process reports
    a crash or any code), else ``"finished"`` for a normal exit with code 0, else ``"failed"``."""
    if cancelled:
        return "cancelled"
    return "finished" if exit_code == 0 and not crashed else "failed"


def finish_text(what: str, outcome: str, tracker: ProgressTracker, exit_code: int | None) -> str:
    """Status text at the end of a run (``outcome`` of :func:`run_outcome`): ``"Cancelled."``, ``"<what> failed:
    <error event, or exit code (None: it crashed)>"`` or ``"<what> finished: <scores of the done event>"``."""
    if outcome == "cancelled":
        return "Cancelled."
    if outcome == "failed":
        ended = "the process crashed or was killed (out of memory?)" if exit_code is None else f"exit code {exit_code}"
        return f"{what} failed: {tracker.error or ended}"
    result = tracker.result or {}
    scores = [f"{label} {result[key]:.4g}" for key, label in _METRIC_LABELS.items()
              if key != "lr" and isinstance(result.get(key), (int, float))]
    return f"{what} finished: {' · '.join(scores)}" if scores else f"{what} finished."


def read_history_csv(path: str | os.PathLike) -> dict[str, list[float]]:
    """Columns of a training ``log.csv`` as float lists, one entry per row; an empty or non-numeric cell (the
    validation columns of rows without a validation) → NaN. A missing file → {}."""
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
    """``(metric, value text)`` rows of an evaluation report's ``metrics`` (architecture.md order first); a value
    the report could not give (``null``: the writer turns non-finite numbers into it) reads "n/a"."""
    from .metrics import METRIC_KEYS

    metrics = report.get("metrics")
    if not isinstance(metrics, dict):
        raise ValueError(f"evaluation report has no 'metrics' object; keys: {sorted(report)}")
    names = [k for k in METRIC_KEYS if k in metrics] + sorted(k for k in metrics if k not in METRIC_KEYS)
    return [(k, "n/a" if metrics[k] is None else f"{float(metrics[k]):.4f}") for k in names]


def plot_columns(history: dict[str, list[float]]) -> tuple[str | None, list[str]]:
    """``(x column, y columns)`` to plot: x is ``step`` (optimizer steps: rows come at validations and every
    ``--log-every`` steps, not once per epoch), else ``epoch``, else None (row number); y are the loss and
    AbsRel columns."""
    x = next((c for c in ("step", "epoch") if c in history), None)
    return x, [c for c in history if c != x and ("loss" in c.lower() or "abs_rel" in c.lower())]


def plot_series(history: dict[str, list[float]]) -> list[tuple[str, str, list[float], list[float]]]:
    """``(y name, x name, xs, ys)`` of each column of :func:`plot_columns` that has values, keeping only the rows
    where both are finite (log.csv leaves the validation cells of most rows empty; its first loss is NaN)."""
    x, ys = plot_columns(history)
    series = []
    for y in ys:
        xs = history[x] if x is not None else [float(i) for i in range(len(history[y]))]
        kept = [(a, b) for a, b in zip(xs, history[y]) if math.isfinite(a) and math.isfinite(b)]
        if kept:
            series.append((y, x or "row", [a for a, _ in kept], [b for _, b in kept]))
    return series


class LineBuffer:
    """Cuts a process's output chunks (UTF-8 bytes) into lines; a line, or a character's bytes, split between two
    chunks is joined again. ``carriage_return``: ``\\r`` ends a line too (progress bars redraw with it)."""

    def __init__(self, carriage_return: bool = False):
        self._pending, self._cr = "", carriage_return
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode

    def feed(self, data: bytes, final: bool = False) -> list[str]:
        """The lines completed by ``data``; ``final``: the output ended, so the rest is a line too."""
        text = self._pending + self._decode(data, final)
        *lines, self._pending = (text.replace("\r", "\n") if self._cr else text).split("\n")
        if final and self._pending:
            lines.append(self._pending)
            self._pending = ""
        return lines


#: the history file ``surgical-depth train`` writes into its output folder (see :mod:`.training`)
HISTORY_NAME = "log.csv"
FIGURE_PATTERNS = ("qualitative*.png", "figure*.png", "summary*.png")


def find_history(folder: str | os.PathLike) -> Path | None:
    """The training history of an output folder: ``log.csv`` there, or in its ``run`` sub-folder (where
    ``train --recipe default`` trains); None when there is none."""
    for path in (Path(folder) / HISTORY_NAME, Path(folder) / "run" / HISTORY_NAME):
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
