"""Tests of SurgicalDepthTrainingLib.slicer_helpers: command lines and progress parsing of the Training module."""
from __future__ import annotations

import math
import os
import time

import pytest

from SurgicalDepthTrainingLib import slicer_helpers as sh


def _recipe(**kw):
    base = dict(dataset="c3vd", root="/data/c3vd", output="/runs/a")
    return sh.TrainRecipe(**{**base, **kw})


def test_train_recipe_validation():
    _recipe()
    for kw, match in [(dict(dataset="nope"), "dataset must be one of"), (dict(loss="mse"), "loss must be one of"),
                      (dict(root=""), "root folder"), (dict(output="."), "output folder"),
                      (dict(lr=0.0), "lr must be"), (dict(batch_size=0), "batch_size"),
                      (dict(epochs=0), "epochs"), (dict(input_size=500), "multiple of 14"),
                      (dict(lora_rank=-1), "lora_rank")]:
        with pytest.raises(ValueError, match=match):
            _recipe(**kw)


def test_train_command_single_process():
    cmd = sh.train_command("/slicer/bin/PythonSlicer", _recipe(lr=1e-5, batch_size=8, epochs=3, input_size=266))
    assert cmd == ["/slicer/bin/PythonSlicer", "-m", "SurgicalDepthTrainingLib", "train", "--dataset", "c3vd",
                   "--root", "/data/c3vd", "--output", "/runs/a", "--model", "default", "--loss", "l1",
                   "--lr", "1e-05", "--batch-size", "8", "--epochs", "3", "--input-size", "266"]


def test_train_command_options_and_torchrun():
    cmd = sh.train_command("py", _recipe(lora_rank=8, freeze_encoder=True), n_gpus=4, resume=True)
    assert cmd[:7] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m",
                       "SurgicalDepthTrainingLib"]
    assert cmd[7] == "train"
    assert cmd[cmd.index("--lora") + 1] == "8" and "--freeze-encoder" in cmd and cmd[-1] == "--resume"
    assert "--lora" not in sh.train_command("py", _recipe())
    with pytest.raises(ValueError, match="n_gpus"):
        sh.train_command("py", _recipe(), n_gpus=0)


def test_synth_and_evaluate_commands():
    assert sh.synth_command("py", "/d", frames=12, seed=3, organ="colon") == [
        "py", "-m", "SurgicalDepthTrainingLib", "synth", "--output", "/d", "--frames", "12", "--seed", "3",
        "--organ", "colon"]
    assert sh.evaluate_command("py", "scared", "/s", "m.pth", "/o/r.json", "scale_shift") == [
        "py", "-m", "SurgicalDepthTrainingLib", "evaluate", "--dataset", "scared", "--root", "/s", "--model", "m.pth",
        "--alignment", "scale_shift", "--output", "/o/r.json"]
    with pytest.raises(ValueError, match="alignment"):
        sh.evaluate_command("py", "scared", "/s", "m", "/o.json", "mean")
    with pytest.raises(ValueError, match="frames"):
        sh.synth_command("py", "/d", frames=0)


@pytest.mark.parametrize("which", ["train", "synth", "evaluate"])
def test_commands_parse_with_the_real_cli(which):
    """The argv the panel builds must be accepted by ``surgical-depth``."""
    from SurgicalDepthLib.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps sub-parsers here
    assert which in commands
    argv = {"train": sh.train_command("py", _recipe(lora_rank=4, freeze_encoder=True)),
            "synth": sh.synth_command("py", "/d", frames=4, seed=1),
            "evaluate": sh.evaluate_command("py", "c3vd", "/s", "default", "/o.json")}[which]
    args = parser.parse_args(argv[3:])
    assert args.command == which


def test_pythonpath_with():
    sep = os.pathsep
    assert sh.pythonpath_with(["/a", "/b"], None) == f"/a{sep}/b"
    assert sh.pythonpath_with(["/a"], f"/x{sep}/a{sep}") == f"/a{sep}/x"


@pytest.mark.parametrize("line, expected", [
    ("epoch 3/10 step 40/120 loss=0.1234 lr=1e-4",
     {"epoch": 3, "epochs": 10, "step": 40, "steps": 120, "loss": 0.1234, "lr": 1e-4}),
    ("[train] Epoch: 2/5, train_loss: 0.5, val_abs_rel: 0.21", {"epoch": 2, "epochs": 5, "train_loss": 0.5,
                                                                "val_abs_rel": 0.21}),
    ("epoch 1/2 iter 3/4", {"epoch": 1, "epochs": 2, "step": 3, "steps": 4}),
    ("loading weights", None),
])
def test_parse_progress_line(line, expected):
    assert sh.parse_progress_line(line) == expected


def test_progress_percent():
    assert sh.progress_percent({"epoch": 1, "epochs": 4, "step": 50, "steps": 100}) == 12
    assert sh.progress_percent({"epoch": 4, "epochs": 4, "step": 100, "steps": 100}) == 100
    assert sh.progress_percent({"epoch": 2, "epochs": 4}) == 50  # an epoch line without steps = epoch done
    assert sh.progress_percent({"epoch": 9, "epochs": 4}) == 100


def test_read_history_csv(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,train_loss,val_abs_rel\n1,0.5,0.3\n2,0.4,\n")
    history = sh.read_history_csv(path)
    assert history["epoch"] == [1.0, 2.0] and history["train_loss"] == [0.5, 0.4]
    assert history["val_abs_rel"][0] == 0.3 and math.isnan(history["val_abs_rel"][1])
    assert sh.read_history_csv(tmp_path / "missing.csv") == {}
    assert sh.plot_columns(history) == ("epoch", ["train_loss", "val_abs_rel"])
    assert sh.plot_columns({"lr": [1.0], "loss": [2.0]}) == (None, ["loss"])


def test_metric_rows():
    report = {"metrics": {"a1": 0.9, "abs_rel": 0.12345, "extra": 2, "rmse": 3.0}}
    assert sh.metric_rows(report) == [("abs_rel", "0.1235"), ("rmse", "3.0000"), ("a1", "0.9000"),
                                      ("extra", "2.0000")]
    with pytest.raises(ValueError, match="no 'metrics'"):
        sh.metric_rows({"per_image": []})


def test_find_history_and_figure(tmp_path):
    assert sh.find_history(tmp_path) is None and sh.find_figure(tmp_path) is None
    (tmp_path / "metrics.csv").write_text("epoch,loss\n")
    assert sh.find_history(tmp_path).name == "metrics.csv"
    (tmp_path / "history.csv").write_text("epoch,loss\n")
    assert sh.find_history(tmp_path).name == "history.csv"
    (tmp_path / "other.png").write_bytes(b"x")
    assert sh.find_figure(tmp_path).name == "other.png"
    (tmp_path / "qualitative_epoch1.png").write_bytes(b"x")
    time.sleep(0.01)
    (tmp_path / "qualitative_epoch2.png").write_bytes(b"x")
    os.utime(tmp_path / "qualitative_epoch1.png", (1, 1))
    assert sh.find_figure(tmp_path).name == "qualitative_epoch2.png"


def test_last_lines():
    assert sh.last_lines(["a\n", "", "b", "  ", "c"], 2) == ["b", "c"]


def test_dataset_names_equal_the_dataset_registry():
    import SurgicalDepthTrainingLib as sdt

    assert set(sh.DATASET_NAMES) == set(sdt.list_datasets())
