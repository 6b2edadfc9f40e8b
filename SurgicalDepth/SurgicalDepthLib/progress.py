"""Progress of long work as a human-readable bar or as machine-readable JSON lines (``--progress jsonl``).

One :class:`ProgressReporter` per command run. ``mode``:

- ``"bar"``: tqdm bars on stderr (the terminal default);
- ``"jsonl"``: one JSON object per line on the given stream (stdout for the CLI), for the Slicer modules and other
  callers that drive ``surgical-depth`` as a subprocess::

      {"event": "progress", "stage": "predict", "step": 3, "total": 10, "loss": 0.12}
      ...
      {"event": "done", "frames": 10}            or    {"event": "error", "message": "..."}

  ``step`` counts finished units of the stage (frames, images, optimiser steps) from 0 to ``total``; ``total`` is
  null when unknown. Extra keys are the stage's current metrics (numbers). Stages follow each other; a caller that
  knows the list of stages (:data:`STAGES`) can weight them into one percentage;
- ``"none"``: nothing.

Library functions take a ``progress`` argument of type :class:`ProgressReporter` (None = a bar) and open stages
with :meth:`ProgressReporter.stage`; they never print progress themselves.
"""
from __future__ import annotations

import json
import math
import sys
import threading
from typing import IO, Any

PROGRESS_MODES = ("bar", "jsonl", "none")

#: Stages that the commands report, in the order they run (``--progress jsonl`` ``"stage"`` values).
STAGES = {
    "predict": ("predict",),
    "reconstruct": ("reconstruct", "mesh"),
    "synth": ("synth",),
    "train": ("render", "train"),  # "render": only ``train --recipe default`` (renders its data set first)
    "evaluate": ("evaluate",),
    "demo": ("depth",),
    "stream": ("stream",),  # a server: step = frames answered, total null
    "download": ("download",),  # bytes
    "export": ("export",),
}


def _number(value: Any) -> Any:
    """JSON-safe metric value: floats stay floats (non-finite become null), ints stay ints."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


class ProgressReporter:
    """Where the progress of one run goes (see the module docstring)."""

    def __init__(self, mode: str = "bar", stream: IO[str] | None = None):
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress mode must be one of {PROGRESS_MODES}, got {mode!r}")
        self.mode = mode
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()  # stages may be updated from a writer thread

    def emit(self, event: str, **fields: Any) -> None:
        """Write one JSON line ``{"event": event, **fields}`` (jsonl mode only)."""
        if self.mode != "jsonl":
            return
        line = json.dumps({"event": event, **{k: _number(v) for k, v in fields.items()}}, allow_nan=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def stage(self, name: str, total: int | None = None, *, unit: str = "frame", initial: int = 0,
              desc: str | None = None) -> "Stage":
        """Open a stage of ``total`` units (None = unknown); use as a context manager or call ``close()``."""
        return Stage(self, name, total, unit=unit, initial=initial, desc=desc)

    def done(self, **fields: Any) -> None:
        self.emit("done", **fields)

    def error(self, message: str) -> None:
        self.emit("error", message=str(message))


class Stage:
    """One stage of a :class:`ProgressReporter`: ``update(n, **metrics)`` after each finished unit."""

    def __init__(self, reporter: ProgressReporter, name: str, total: int | None, *, unit: str = "frame",
                 initial: int = 0, desc: str | None = None):
        self.reporter, self.name, self.total, self.step = reporter, name, total, int(initial)
        self._bar = None
        if reporter.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc or name, unit=unit, dynamic_ncols=True)
        reporter.emit("progress", stage=name, step=self.step, total=total)

    def update(self, n: int = 1, **metrics: Any) -> None:
        self.step += int(n)
        if self._bar is not None:
            self._bar.update(n)
            if metrics:
                self._bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in metrics.items()},
                                      refresh=False)
        self.reporter.emit("progress", stage=self.name, step=self.step, total=self.total, **metrics)

    def retotal(self, total: int | None) -> None:
        """Correct the stage's ``total`` once the real count is known (a video that ends before the frame count its
        container announced): the bar and a progress event say it, so the stage still ends at ``total``."""
        if total == self.total:
            return
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()
        self.reporter.emit("progress", stage=self.name, step=self.step, total=self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Stage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
