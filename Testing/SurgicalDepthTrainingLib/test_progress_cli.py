"""``--progress jsonl`` of ``synth``, ``train`` and ``evaluate``, run as the Training module runs them: the real CLI
(``python -m SurgicalDepthTrainingLib``) in a subprocess, its stdout read by the module's own tracker."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from SurgicalDepthTrainingLib.slicer_helpers import ProgressTracker
from tiny_model import kvasir_like

# one OpenMP thread: on a shared 2-core machine more threads only add contention (see conftest one_torch_thread)
_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args: str, progress: str = "jsonl") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SurgicalDepthTrainingLib", *args, "--progress", progress],
                          env=_ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """synth -> train (tiny model, 2 steps) -> evaluate (the trained model, with the qualitative figure)."""
    tmp = tmp_path_factory.mktemp("progress")
    data, run = tmp / "data", tmp / "run"
    out = {"synth": _cli("synth", "--output", str(data), "--frames", "4", "--size", "56x70", "--seed", "1")}
    out["train"] = _cli("train", "--dataset", "synthetic", "--root", str(data), "--output", str(run),
                        "--model", "random:surgical-depth-tiny", "--max-steps", "2", "--batch-size", "1",
                        "--input-size", "56", "70", "--val-fraction", "0.25", "--device", "cpu")
    out["evaluate"] = _cli("evaluate", "--dataset", "synthetic", "--root", str(data), "--model",
                           str(run / "best.safetensors"), "--input-size", "56", "--device", "cpu",
                           "--output", str(tmp / "report.json"), "--figure", str(tmp / "qualitative.png"))
    return {"tmp": tmp, **out}


def _events(done: subprocess.CompletedProcess) -> list[dict]:
    lines = done.stdout.splitlines()
    assert lines, done.stderr[-2000:]
    events = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert all(isinstance(e, dict) and e.get("event") in ("progress", "done", "error") for e in events)
    return events


@pytest.mark.parametrize("command", ["synth", "train", "evaluate"])
def test_stdout_is_json_lines_ending_with_done_and_the_tracker_reaches_100(runs, command):
    """Catches text (prints, tqdm) on stdout in jsonl mode, a missing ``done`` event, and a progress display that
    goes backwards or stops short of 100 % for a real run."""
    done = runs[command]
    assert done.returncode == 0, done.stderr[-2000:]
    events = _events(done)
    assert events[-1]["event"] == "done" and [e["event"] for e in events].count("done") == 1
    tracker = ProgressTracker(command)
    percents = [tracker.feed(line) for line in done.stdout.splitlines()]
    assert None not in percents and percents == sorted(percents) and percents[-1] == 100
    assert max(percents[:-1]) == 100  # the progress lines alone complete the bar, not only "done"


def test_one_update_per_unit_with_metrics(runs):
    """Catches progress reported per batch or epoch instead of per frame / optimiser step / image, and the train
    and evaluate metrics (loss, lr, validation AbsRel / delta1, running AbsRel) missing from the lines."""
    steps = {c: [(e["stage"], e["step"], e["total"]) for e in _events(runs[c]) if e["event"] == "progress"]
             for c in ("synth", "train", "evaluate")}
    assert steps["synth"] == [("synth", i, 4) for i in range(5)]
    train = [e for e in _events(runs["train"]) if e["event"] == "progress"]
    stepped = [e for e in train if "loss" in e]
    assert [e["step"] for e in stepped] == [1, 2] and all(e["total"] == 2 and e["lr"] >= 0 for e in stepped)
    validated = [e for e in train if "val_abs_rel" in e]
    assert [e["step"] for e in validated] == [0, 2] and all(0 <= e["val_a1"] <= 1 for e in validated)
    n = json.loads((runs["tmp"] / "report.json").read_text())["n_images"]
    assert [s[1] for s in steps["evaluate"]] == list(range(n + 1))
    last = [e for e in _events(runs["evaluate"]) if e["event"] == "progress"][-1]
    assert last["abs_rel"] == pytest.approx(json.loads((runs["tmp"] / "report.json").read_text())
                                            ["metrics"]["abs_rel"])


def test_done_event_names_the_outputs(runs):
    """Catches a ``done`` event without what the caller needs next (dataset folder, best checkpoint, report and
    figure, scores)."""
    synth, train, evaluate = (_events(runs[c])[-1] for c in ("synth", "train", "evaluate"))
    assert synth == {"event": "done", "frames": 4, "output": str(runs["tmp"] / "data")}
    assert Path(train["best"]).is_file() and 0 <= train["val_abs_rel"] and 0 <= train["val_a1"] <= 1
    assert evaluate["report"] == str(runs["tmp"] / "report.json") and Path(evaluate["figure"]).is_file()
    assert evaluate["abs_rel"] >= 0 and evaluate["n_images"] >= 1


@pytest.mark.parametrize("args, names", [
    (("synth", "--output", "OUT", "--frames", "0"), "--frames"),
    (("train", "--dataset", "synthetic", "--root", "MISSING", "--output", "OUT"), "MISSING"),
])
def test_bad_arguments_end_with_an_error_event_and_exit_2(tmp_path, args, names):
    """Catches a failed run whose stdout ends without ``{"event": "error"}`` (the panel would wait for ``done``)
    or with a traceback."""
    args = [a.replace("OUT", str(tmp_path / "out")).replace("MISSING", str(tmp_path / "missing")) for a in args]
    done = _cli(*args)
    events = _events(done)
    assert done.returncode == 2 and events[-1]["event"] == "error" and "Traceback" not in done.stderr
    assert names.replace("MISSING", "missing") in events[-1]["message"]
    tracker = ProgressTracker(args[0])
    for line in done.stdout.splitlines():
        tracker.feed(line)
    assert tracker.error == events[-1]["message"] and tracker.percent < 100


def test_bar_mode_is_a_tqdm_bar_on_stderr(tmp_path):
    """Catches ``--progress bar`` (the terminal default) losing its tqdm bar or printing JSON."""
    done = _cli("synth", "--output", str(tmp_path / "d"), "--frames", "2", "--size", "28x28", progress="bar")
    assert done.returncode == 0 and "{" not in done.stdout
    assert "synth colon: 100%" in done.stderr and "2/2" in done.stderr


@pytest.mark.usefixtures("one_torch_thread")
def test_default_recipe_reports_render_then_train(tmp_path, monkeypatch):
    """Catches ``train --recipe default`` rendering its data set without progress (minutes of a silent bar), and
    its stages not adding up to a monotonic 0-100 % for the tracker of the ``train`` command."""
    import io

    from SurgicalDepthLib.progress import ProgressReporter

    from SurgicalDepthTrainingLib.recipes import DEFAULT_RECIPE, train_default_model

    # a smaller recipe (the shipped one is run by test_recipes): 3 clips x 2 frames, batch 4 at 56 x 56
    monkeypatch.setitem(DEFAULT_RECIPE, "frames_per_clip", 2)
    small = tuple(dict(stage, train={**stage["train"], "batch_size": 4, "input_size": (56, 56)})
                  for stage in DEFAULT_RECIPE["stages"])
    monkeypatch.setitem(DEFAULT_RECIPE, "stages", small)
    monkeypatch.setattr("SurgicalDepthTrainingLib.recipes.KVASIR_SEG_HELD_OUT_LAST", 2)
    stream = io.StringIO()
    train_default_model(tmp_path, max_steps=1, n_clips=3, device="cpu", progress=ProgressReporter("jsonl", stream),
                        unlabeled_root=kvasir_like(tmp_path / "kvasir"))
    lines = stream.getvalue().splitlines()
    events = [json.loads(line) for line in lines]
    stages = [e["stage"] for e in events]
    assert stages[:4] == ["render"] * 4 and set(stages[4:]) == {"train"}
    # the training stages count on as one (one step each here), never restarting at 0
    n = len(small)
    train_steps = [e["step"] for e in events[4:]]
    assert train_steps == sorted(train_steps) and train_steps[-1] == n and {e["total"] for e in events[4:]} == {n}
    tracker = ProgressTracker("train")
    percents = [tracker.feed(line) for line in lines]
    assert percents == sorted(percents) and percents[3] == 50 and percents[-1] == 100
