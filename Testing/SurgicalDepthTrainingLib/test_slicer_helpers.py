"""SurgicalDepthTrainingLib.slicer_helpers: command lines, progress lines and history of the Training module."""
from __future__ import annotations

import json
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
                      (dict(epochs=0), "epochs"), (dict(input_size=(252, 500)), "multiples of 14"),
                      (dict(input_size=(252,)), "height, width"), (dict(lora_rank=-1), "lora_rank")]:
        with pytest.raises(ValueError, match=match):
            _recipe(**kw)


def test_train_command_single_process():
    """Catches a lost ``--progress jsonl`` (the panel would see no progress) and a size passed as one number."""
    cmd = sh.train_command("/slicer/bin/PythonSlicer", _recipe(model="default", loss="l1", lr=1e-5, batch_size=8,
                                                               epochs=3, input_size=(252, 392)))
    assert cmd == ["/slicer/bin/PythonSlicer", "-m", "SurgicalDepthTrainingLib", "train", "--dataset", "c3vd",
                   "--root", "/data/c3vd", "--output", "/runs/a", "--model", "default", "--loss", "l1",
                   "--lr", "1e-05", "--batch-size", "8", "--epochs", "3", "--input-size", "252", "392",
                   "--progress", "jsonl"]


def test_train_recipe_leaves_unset_settings_to_the_train_command():
    """Catches a recipe that restates (and once contradicted: 518 px) the train command's defaults: unset settings
    are not passed, so TrainConfig's defaults apply."""
    from SurgicalDepthLib.cli import build_parser

    cmd = sh.train_command("py", _recipe())
    assert not {"--model", "--loss", "--lr", "--batch-size", "--epochs", "--input-size"} & set(cmd)
    args = build_parser().parse_args(cmd[3:])
    assert (args.input_size, args.lr, args.epochs, args.batch_size, args.loss) == (None,) * 5


def test_train_command_options_and_torchrun():
    cmd = sh.train_command("py", _recipe(lora_rank=8, freeze_encoder=True), n_gpus=4, earlier="resume")
    assert cmd[:7] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m",
                       "SurgicalDepthTrainingLib"]
    assert cmd[7] == "train" and cmd[-2:] == ["--progress", "jsonl"]
    assert cmd[cmd.index("--lora") + 1] == "8" and "--freeze-encoder" in cmd and "--resume" in cmd
    assert "--lora" not in sh.train_command("py", _recipe())
    assert sh.command_name(cmd) == "train"
    with pytest.raises(ValueError, match="n_gpus"):
        sh.train_command("py", _recipe(), n_gpus=0)


def test_synth_and_evaluate_commands():
    assert sh.synth_command("py", "/d", frames=12, seed=3, organ="colon") == [
        "py", "-m", "SurgicalDepthTrainingLib", "synth", "--output", "/d", "--frames", "12", "--seed", "3",
        "--organ", "colon", "--progress", "jsonl"]
    assert sh.evaluate_command("py", "scared", "/s", "m.pth", "/o/r.json", "scale_shift", figure="/o/q.png") == [
        "py", "-m", "SurgicalDepthTrainingLib", "evaluate", "--dataset", "scared", "--root", "/s", "--model", "m.pth",
        "--alignment", "scale_shift", "--output", "/o/r.json", "--figure", "/o/q.png", "--progress", "jsonl"]
    with pytest.raises(ValueError, match="alignment"):
        sh.evaluate_command("py", "scared", "/s", "m", "/o.json", "mean")
    with pytest.raises(ValueError, match="dataset"):
        sh.evaluate_command("py", "nosuch", "/s", "m", "/o.json")
    with pytest.raises(ValueError, match="frames"):
        sh.synth_command("py", "/d", frames=0)
    with pytest.raises(ValueError, match="COMMAND"):
        sh.command_name(["py", "-m", "other", "train"])


def test_earlier_results_choice_reaches_train_and_evaluate(tmp_path):
    """Catches a panel that could not resume an interrupted training or replace an earlier report: its run into a
    used folder was refused with the CLI's advice to pass ``--resume`` / ``--overwrite``, which it had no way to
    pass. The real CLI parses each command line with the flag it should get, and an unknown choice is refused."""
    from SurgicalDepthLib.cli import build_parser

    parser = build_parser()
    for earlier, resume, overwrite in (("keep", False, False), ("resume", True, False), ("replace", False, True)):
        train = parser.parse_args(sh.train_command("py", _recipe(), earlier=earlier)[3:])
        assert (train.resume, train.overwrite) == (resume, overwrite)
        evaluate = parser.parse_args(sh.evaluate_command("py", "c3vd", "/s", "default", "/o.json",
                                                         earlier=earlier)[3:])
        assert evaluate.overwrite == overwrite  # evaluate has nothing to resume
        synth = parser.parse_args(sh.synth_command("py", "/d", earlier=earlier)[3:])
        assert synth.overwrite == overwrite  # an earlier synthetic data set in the dataset folder
    with pytest.raises(ValueError, match="earlier results must be one of"):
        sh.train_command("py", _recipe(), earlier="overwrite")


@pytest.mark.parametrize("which", ["train", "synth", "evaluate"])
def test_commands_parse_with_the_real_cli(which):
    """The argv the panel builds must be accepted by ``surgical-depth``."""
    from SurgicalDepthLib.cli import build_parser

    parser = build_parser()
    argv = {"train": sh.train_command("py", _recipe(lora_rank=4, freeze_encoder=True, input_size=(56, 70),
                                                    lr=3e-5, loss="ssi")),
            "synth": sh.synth_command("py", "/d", frames=4, seed=1),
            "evaluate": sh.evaluate_command("py", "c3vd", "/s", "default", "/o.json", figure="/q.png")}[which]
    args = parser.parse_args(argv[3:])
    assert args.command == which == sh.command_name(argv) and args.progress == "jsonl"


def test_base_model_source():
    assert sh.base_model_source("default", ".") == "default"
    assert sh.base_model_source("depth-anything-v2-small") == "depth-anything-v2-small"
    assert sh.base_model_source("file", "/m/best.safetensors") == "/m/best.safetensors"
    with pytest.raises(ValueError, match="no checkpoint path"):
        sh.base_model_source("file", ".")  # parameterNodeWrapper's empty Path


def test_pythonpath_with():
    sep = os.pathsep
    assert sh.pythonpath_with(["/a", "/b"], None) == f"/a{sep}/b"
    assert sh.pythonpath_with(["/a"], f"/x{sep}/a{sep}") == f"/a{sep}/x"


_P = '{"event": "progress", "stage": "train", "step": 3, "total": 10, "loss": 0.5}'


@pytest.mark.parametrize("line, expected", [
    (_P, json.loads(_P)),
    (_P + "\n", json.loads(_P)),
    ('{"event": "done", "best": "/r/best.safetensors"}', {"event": "done", "best": "/r/best.safetensors"}),
    ('{"event": "error", "message": "bad --root"}', {"event": "error", "message": "bad --root"}),
    ('{"event": "progress", "stage": "synth", "step": 0, "total": null}',
     {"event": "progress", "stage": "synth", "step": 0, "total": None}),
    ("train:  30%|███       | 3/10 [00:01<00:02, 3.1step/s]" + _P, json.loads(_P)),  # a bar ran into the line
    ("train:  30%|███       | 3/10 [00:01<00:02, 3.1step/s, loss=0.5]", None),
    (_P[:25], None),  # a line cut short
    ("", None),
    ("epoch 3/10 step 40/120 loss=0.1234", None),  # the old text format: nothing prints it any more
    ('{"event": "hello"}', None),
    ("[1, 2]", None),
    ('{"event": "progress", "stage": "train", "total": 10}', None),  # no step
    ('{"event": "progress", "stage": "train", "step": true, "total": 10}', None),
    ('{"event": "progress", "stage": "train", "step": -1, "total": 10}', None),
    ('{"event": "progress", "step": 1, "total": 10}', None),  # no stage
])
def test_parse_progress_line(line, expected):
    """Catches non-JSON output (tqdm, logs, partial lines) or malformed events taken for progress."""
    assert sh.parse_progress_line(line) == expected


def _progress(stage, step, total, **metrics):
    return json.dumps({"event": "progress", "stage": stage, "step": step, "total": total, **metrics})


def test_progress_percent_of_single_lines():
    p = json.loads(_progress("train", 50, 100))
    assert sh.progress_percent(p) == 50
    assert sh.progress_percent(p, ("render", "train")) == 75  # render counted as finished
    assert sh.progress_percent(json.loads(_progress("train", 5, None))) == 0  # unknown total
    assert sh.progress_percent({"event": "done"}) == 100
    assert sh.progress_percent({"event": "error", "message": "x"}) == 0


def _feed(command, lines):
    tracker = sh.ProgressTracker(command)
    return tracker, [tracker.feed(line) for line in lines]


def test_tracker_skipped_first_stage_does_not_cap_the_percentage():
    """Catches a plain ``train`` run (no ``render`` stage, which only ``--recipe default`` has) showing 50-100 %
    or never reaching 100."""
    _, got = _feed("train", [_progress("train", s, 4) for s in range(5)] + ['{"event": "done"}'])
    assert got == [0, 25, 50, 75, 100, 100]


def test_tracker_weights_stages_and_never_goes_back():
    """Catches the bar jumping back when a new stage starts at step 0, when a total is unknown, or when a stage
    repeats."""
    lines = [_progress("render", 0, 2), _progress("render", 1, 2), _progress("render", 2, 2),
             _progress("train", 0, 4), _progress("train", 0, None), _progress("train", 2, 4),
             _progress("render", 0, 2), "not json", _progress("train", 1, 4), _progress("train", 4, 4),
             '{"event": "done", "best": "b"}']
    tracker, got = _feed("train", lines)
    assert got == [0, 25, 50, 50, 50, 75, 75, None, 75, 100, 100]
    assert tracker.result == {"best": "b"} and tracker.percent == 100


def test_tracker_unknown_stage_and_error():
    tracker, got = _feed("evaluate", [_progress("figure", 1, 2), _progress("evaluate", 1, 2),
                                      '{"event": "error", "message": "CUDA out of memory"}'])
    assert got == [0, 50, 50] and tracker.error == "CUDA out of memory" and tracker.result is None
    with pytest.raises(ValueError, match="command must be one of"):
        sh.ProgressTracker("nosuch")


def test_tracker_status_says_what_happens():
    """Catches a status text without the stage, step/total, loss or validation AbsRel (and one that keeps the
    previous stage's metrics)."""
    tracker, _ = _feed("train", [_progress("render", 1, 2, abs_rel=0.9), _progress("train", 0, 10),
                                 _progress("train", 0, 10, val_abs_rel=0.25, val_a1=0.6),
                                 _progress("train", 1, 10, loss=0.1234, lr=3e-5)])
    status = tracker.status()
    assert status.startswith("train: 1/10") and "loss 0.1234" in status and "val AbsRel 0.25" in status
    assert "lr 3e-05" in status and " AbsRel 0.9" not in status
    assert sh.ProgressTracker("synth").status() == ""


def test_run_outcome_and_finish_text():
    """Catches a cancelled run reported as "failed": a terminated process crashes (Linux) or exits with code 1
    (Windows kill), and the cancel flag must win."""
    assert sh.run_outcome(0, False, False) == "finished"
    assert sh.run_outcome(2, False, False) == sh.run_outcome(0, True, False) == "failed"
    assert sh.run_outcome(15, True, True) == sh.run_outcome(1, False, True) == sh.run_outcome(0, False, True) \
        == "cancelled"
    tracker, _ = _feed("evaluate", ['{"event": "done", "abs_rel": 0.12345, "a1": 0.9, "report": "r.json"}'])
    assert sh.finish_text("Evaluation", "finished", tracker, 0) == "Evaluation finished: AbsRel 0.1235 · δ1 0.9"
    assert sh.finish_text("Synthetic data", "finished", sh.ProgressTracker("synth"), 0) == "Synthetic data finished."
    assert sh.finish_text("Training", "cancelled", tracker, 1) == "Cancelled."
    failed, _ = _feed("train", ['{"event": "error", "message": "--root x does not exist"}'])
    assert sh.finish_text("Training", "failed", failed, 2) == "Training failed: --root x does not exist"
    assert sh.finish_text("Training", "failed", sh.ProgressTracker("train"), 139) == "Training failed: exit code 139"
    # a crash (QProcess.CrashExit: killed, out of memory) has no exit code to show
    assert sh.finish_text("Training", "failed", sh.ProgressTracker("train"), None) == \
        "Training failed: the process crashed or was killed (out of memory?)"


def test_line_buffer_joins_lines_and_characters_split_between_chunks():
    """Catches JSON lines lost or broken when the pipe delivers them in pieces, and a character whose UTF-8 bytes
    the pipe split decoded chunk by chunk (the error dialog showed U+FFFD in a path's 'é' or in 'δ1')."""
    out = sh.LineBuffer()
    assert out.feed(_P[:20].encode()) == [] and out.feed((_P[20:] + "\n{\"event\"").encode()) == [_P]
    assert out.feed(b': "done"}', final=True) == ['{"event": "done"}']
    err = sh.LineBuffer(carriage_return=True)
    assert err.feed(b"train: 10%\rtrain: 20%\rmessage\n") == ["train: 10%", "train: 20%", "message"]
    text = "--root /données/δ1 does not exist\n".encode()
    split = sh.LineBuffer()
    lines = [line for i in range(len(text)) for line in split.feed(text[i:i + 1])]
    assert lines == ["--root /données/δ1 does not exist"]


def test_training_log_history_plots_against_steps(tmp_path):
    """Catches the plot reading a history file training never writes, plotting against epochs (log.csv has
    rows per validation / --log-every steps), or choking on the empty validation cells."""
    from SurgicalDepthTrainingLib.checkpointing import write_log

    path = tmp_path / "log.csv"
    write_log(path, [dict(epoch=0, step=0, loss=float("nan"), val_abs_rel=0.3, val_a1=0.5, lr=3e-5),
                      dict(epoch=0, step=50, loss=0.4, val_abs_rel="", val_a1="", lr=2e-5),
                      dict(epoch=1, step=100, loss=0.3, val_abs_rel=0.2, val_a1=0.7, lr=1e-5)])
    history = sh.read_history_csv(path)
    assert history["step"] == [0.0, 50.0, 100.0] and math.isnan(history["val_abs_rel"][1])
    assert sh.plot_columns(history) == ("step", ["loss", "val_abs_rel"])
    assert sh.plot_series(history) == [("loss", "step", [50.0, 100.0], [0.4, 0.3]),
                                       ("val_abs_rel", "step", [0.0, 100.0], [0.3, 0.2])]
    assert sh.plot_columns({"epoch": [1.0], "train_loss": [2.0]}) == ("epoch", ["train_loss"])
    assert sh.plot_series({"loss": [float("nan")]}) == []
    assert sh.read_history_csv(tmp_path / "missing.csv") == {}


def test_metric_rows():
    report = {"metrics": {"a1": 0.9, "abs_rel": 0.12345, "extra": 2, "rmse": 3.0}}
    assert sh.metric_rows(report) == [("abs_rel", "0.1235"), ("rmse", "3.0000"), ("a1", "0.9000"),
                                      ("extra", "2.0000")]
    with pytest.raises(ValueError, match="no 'metrics'"):
        sh.metric_rows({"per_image": []})
    # Catches: a null metric (the report writer's non-finite) raising TypeError, so no result was shown at all
    assert sh.metric_rows({"metrics": {"abs_rel": None, "a1": 0.5}}) == [("abs_rel", "n/a"), ("a1", "0.5000")]


def test_find_history_and_figure(tmp_path):
    assert sh.find_history(tmp_path) is None and sh.find_figure(tmp_path) is None
    (tmp_path / "history.csv").write_text("epoch,loss\n")
    assert sh.find_history(tmp_path) is None  # training writes log.csv only
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.csv").write_text("epoch,step,loss\n")
    assert sh.find_history(tmp_path) == tmp_path / "run" / "log.csv"  # train --recipe default
    (tmp_path / "log.csv").write_text("epoch,step,loss\n")
    assert sh.find_history(tmp_path) == tmp_path / "log.csv"
    (tmp_path / "screenshot.png").write_bytes(b"x")
    assert sh.find_figure(tmp_path) is None  # not every PNG of a folder is the run's figure
    (tmp_path / "qualitative_epoch1.png").write_bytes(b"x")
    time.sleep(0.01)
    (tmp_path / "qualitative_epoch2.png").write_bytes(b"x")
    os.utime(tmp_path / "qualitative_epoch1.png", (1, 1))
    assert sh.find_figure(tmp_path).name == "qualitative_epoch2.png"


def test_names_come_from_the_registries():
    import SurgicalDepthTrainingLib as sdt
    from SurgicalDepthTrainingLib.losses import LOSSES

    assert sh.dataset_names() == tuple(sdt.list_datasets()) and sh.loss_names() == tuple(LOSSES)
