"""evaluation + reports + the evaluate CLI: exact answers on known predictions, a real tiny model end to end."""
from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
import torch
from SurgicalDepthLib.cli import main
from SurgicalDepthLib.model import DepthModel
from SurgicalDepthLib.configs import make_config
from SurgicalDepthLib.progress import ProgressReporter
from SurgicalDepthTrainingLib.evaluation import evaluate, evaluate_predictions
from SurgicalDepthTrainingLib.metrics import METRIC_KEYS, depth_metrics
from SurgicalDepthTrainingLib.reports import markdown_table, qualitative_figure, read_report, write_report


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see Testing/conftest.py


def plane(seed, h=42, w=56):
    """Tilted plane, exact z-depth in mm, brightness falling with depth; a ring of invalid pixels."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    depth = 40 + rng.uniform(-0.4, 0.4) * (u - w / 2) + rng.uniform(-0.4, 0.4) * (v - h / 2)
    depth = np.maximum(depth, 15.0)
    shade = np.clip(255 * 25 / depth, 0, 255)
    image = np.stack([shade, shade * 0.6, shade * 0.5], -1).astype(np.uint8)
    valid = np.ones((h, w), bool)
    valid[:2] = False
    return {"image": image, "depth": depth.astype(np.float32), "valid": valid, "name": f"plane_{seed:03d}.png"}


class Planes(torch.utils.data.Dataset):
    name, root, min_depth, max_depth = "planes", "in-memory", 1e-3, 150.0

    def __init__(self, n):
        self.items = [plane(i) for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_evaluate_predictions_proportional_gives_zero_error():
    samples = [plane(i) for i in range(3)]
    report = evaluate_predictions([(s["name"], s["depth"] * 7.5, s["depth"], s["valid"]) for s in samples])
    assert report["n_images"] == 3 and report["metrics"]["abs_rel"] == pytest.approx(0, abs=1e-7)
    assert report["metrics"]["a1"] == 1.0
    disp = [(s["name"], 3.0 / s["depth"], s["depth"], s["valid"]) for s in samples]
    for alignment in ("median", "scale_shift"):
        r = evaluate_predictions(disp, alignment=alignment, pred_kind="disparity")
        assert r["metrics"]["abs_rel"] == pytest.approx(0, abs=1e-6) and "invert" in r["notes"]
    gt_lo = min(float(s["depth"][s["valid"]].min()) for s in samples)
    assert report["depth_range"][0] == pytest.approx(gt_lo)


def test_evaluate_predictions_mean_is_mean_of_per_image():
    rng = np.random.default_rng(0)
    samples = [plane(i) for i in range(4)]
    pairs = [(s["name"], s["depth"] * rng.lognormal(0, 0.2, s["depth"].shape), s["depth"], s["valid"])
             for s in samples]
    report = evaluate_predictions(pairs, min_depth=1, max_depth=100)
    for k in METRIC_KEYS:
        per = [depth_metrics(p, g, v, min_depth=1, max_depth=100)[k] for _, p, g, v in pairs]
        assert report["metrics"][k] == pytest.approx(np.mean(per))
    with pytest.raises(ValueError, match="plane_000"):
        evaluate_predictions([(samples[0]["name"], samples[0]["depth"], samples[0]["depth"],
                               np.zeros_like(samples[0]["valid"]))])


def test_evaluate_real_tiny_model_report_structure(tmp_path):
    torch.manual_seed(0)
    model = DepthModel(make_config("vitt")).eval()
    report = evaluate(model, Planes(3), input_size=56, batch_size=2, progress=ProgressReporter("none"))
    assert report["n_images"] == 3 and report["dataset"] == "planes" and report["pred_kind"] == "disparity"
    assert set(METRIC_KEYS) <= set(report["metrics"]) and len(report["per_image"]) == 3
    assert report["eval_range"] == [1e-3, 150.0]
    assert all(np.isfinite(v) for v in report["metrics"].values())
    path = write_report(report, tmp_path / "r.json")
    assert read_report(path) == json.loads(json.dumps(report))
    table = markdown_table({"tiny": [report], "other": [dict(report, dataset="c3vd")]})
    lines = table.splitlines()
    assert lines[0] == "| Model | Metric | planes | c3vd |" and len(lines) == 6
    assert lines[2].startswith("| tiny | AbsRel") and lines[2].endswith("| – |")


@pytest.mark.parametrize("unit, to_mm", [("m", 1000.0), ("mm", 1.0)])
def test_evaluate_a_metric_model_in_its_unit(unit, to_mm):
    """Catches a metric model's output taken as millimetres whatever its unit: the official metric models
    (Hypersim, Virtual KITTI) predict metres, so with ``alignment="none"`` (the only one that measures metric
    depth) a perfect model scored AbsRel 0.999 on the datasets' mm ground truth. The report equals the protocol
    applied to the model's own predictions converted to mm, and says so."""
    torch.manual_seed(0)
    model = DepthModel(make_config("vitt", head="metric", max_depth=0.2, metric_unit=unit)).eval()
    assert model.depth_unit == unit
    data = Planes(2)
    report = evaluate(model, data, alignment="none", input_size=56, progress=ProgressReporter("none"))
    expected = evaluate_predictions([(s["name"], model.infer_image(s["image"], 56) * to_mm, s["depth"], s["valid"])
                                     for s in data.items], alignment="none", pred_kind="depth",
                                    min_depth=data.min_depth, max_depth=data.max_depth)
    assert report["metrics"] == pytest.approx(expected["metrics"], rel=1e-6)
    assert ("converted to mm" in report["notes"]) == (unit == "m")


def test_evaluate_reports_one_progress_update_per_image():
    """Catches progress per batch (batch_size 2 must still give 3 updates for 3 images) and a running AbsRel that
    is not the mean the report ends with."""
    torch.manual_seed(0)
    stream = io.StringIO()
    report = evaluate(DepthModel(make_config("vitt")).eval(), Planes(3), input_size=56, batch_size=2,
                      progress=ProgressReporter("jsonl", stream))
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["stage"], e["step"], e["total"]) for e in events] == [("evaluate", i, 3) for i in range(4)]
    assert events[-1]["abs_rel"] == pytest.approx(report["metrics"]["abs_rel"])
    assert events[-1]["a1"] == pytest.approx(report["metrics"]["a1"])


def test_qualitative_figure(tmp_path):
    s = plane(1)
    rows = [{"image": s["image"], "gt": s["depth"], "pred": s["depth"] * 1.1, "valid": s["valid"], "name": "a"}] * 2
    path = qualitative_figure(rows, tmp_path / "fig.png")
    img = cv2.imread(str(path))
    assert img.shape == (2 * 240, 3 * 320, 3)
    # red = near: the nearest ground-truth pixel is redder than the farthest
    gt_tile = cv2.resize(img[:240, 320:640], (56, 42), interpolation=cv2.INTER_NEAREST)[..., ::-1].astype(int)
    d = np.where(s["valid"], s["depth"], np.nan)
    d[:6] = np.nan  # the tile's label box covers its top rows
    near, far = np.unravel_index(np.nanargmin(d), d.shape), np.unravel_index(np.nanargmax(d), d.shape)
    assert gt_tile[near][0] > gt_tile[near][2] and gt_tile[far][2] > gt_tile[far][0]
    with pytest.raises(ValueError, match="PNG"):
        qualitative_figure(rows, tmp_path / "fig.jpg")


def write_folder_dataset(root, n=2):
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    for i in range(n):
        s = plane(i)
        cv2.imwrite(str(root / "rgb" / f"{i:03d}.png"), s["image"][..., ::-1])
        np.save(root / "depth" / f"{i:03d}.npy", np.where(s["valid"], s["depth"], 0).astype(np.float32))


def test_cli_evaluate_end_to_end(tmp_path, capsys):
    from SurgicalDepthLib.checkpoints import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", DepthModel(make_config("vitt")))
    write_folder_dataset(tmp_path / "data")
    out = tmp_path / "report.json"
    rc = main(["evaluate", "--dataset", "folder", "--root", str(tmp_path / "data"), "--model", str(ckpt),
               "--output", str(out), "--input-size", "56", "--device", "cpu", "--table", str(tmp_path / "t.md"),
               "--figure", str(tmp_path / "f.png"), "--alignment", "scale_shift"])
    assert rc == 0, capsys.readouterr().err
    report = read_report(out)
    assert report["n_images"] == 2 and report["alignment"] == "scale_shift" and report["dataset"] == "folder"
    assert (tmp_path / "t.md").read_text().startswith("| Model |") and (tmp_path / "f.png").is_file()


@pytest.mark.parametrize("bad", ["dataset", "root", "model"])
def test_cli_evaluate_bad_input_leaves_no_report(tmp_path, capsys, bad):
    write_folder_dataset(tmp_path / "data", 1)
    args = {"dataset": "folder", "root": str(tmp_path / "data"), "model": "random:surgical-depth-tiny"}
    args[bad] = {"dataset": "nosuch", "root": str(tmp_path / "missing"), "model": str(tmp_path / "no.pth")}[bad]
    out = tmp_path / "r.json"
    rc = main(["evaluate", "--dataset", args["dataset"], "--root", args["root"], "--model", args["model"],
               "--output", str(out), "--input-size", "56", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "error" in err
    assert list(tmp_path.glob("*.json")) == [] and list(tmp_path.glob(".*")) == []


@pytest.mark.parametrize("bounds, message", [
    (["--max-depth", "inf"], "--max-depth: must be a finite number > 0, got 'inf'"),
    (["--min-depth", "-5"], "--min-depth: must be a finite number > 0, got '-5'"),
    (["--max-depth", "nan"], "--max-depth: must be a finite number > 0, got 'nan'"),
    (["--min-depth", "50", "--max-depth", "20"], "--min-depth 50 must be below --max-depth 20")])
def test_cli_evaluate_refuses_a_bad_range_before_predicting(tmp_path, capsys, bounds, message):
    """Catches ``--max-depth inf`` running and writing a cap of null, ``--min-depth -5`` accepted, and ``nan`` or a
    range upside down refused only after the model had loaded and predicted an image; the dataset's name as the
    user spelt it becoming its own table column ("SimCol3D" beside "simcol3d")."""
    write_folder_dataset(tmp_path / "data", 1)
    out = tmp_path / "r.json"
    common = ["evaluate", "--dataset", "Folder", "--root", str(tmp_path / "data"), "--model",
              "random:surgical-depth-tiny", "--output", str(out), "--input-size", "56", "--device", "cpu"]
    rc = main([*common, *bounds])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err and not out.exists()
    assert main([*common, "--min-depth", "1", "--max-depth", "500"]) == 0
    assert read_report(out)["dataset"] == "folder" and read_report(out)["eval_range"] == [1.0, 500.0]


def test_cli_evaluate_never_writes_its_calibration_and_reads_table_reports_first(tmp_path, capsys):
    """Catches: ``--output`` replacing the run's own ``--intrinsics`` file (with --overwrite), and a bad
    ``--table-reports`` file found only after the evaluation had written its report."""
    from SurgicalDepthLib.camera import Intrinsics

    write_folder_dataset(tmp_path / "data", 1)
    calib = tmp_path / "scope.json"
    calib.write_text(json.dumps(Intrinsics.from_fov(56, 42, 100.0).to_dict()))
    before = calib.read_text()
    (tmp_path / "bad.json").write_text("not json")
    common = ["evaluate", "--dataset", "folder", "--root", str(tmp_path / "data"), "--model",
              "random:surgical-depth-tiny", "--input-size", "56", "--device", "cpu"]
    rc = main([*common, "--intrinsics", str(calib), "--output", str(calib), "--overwrite"])
    assert rc == 2 and "--intrinsics" in capsys.readouterr().err and calib.read_text() == before
    rc = main([*common, "--output", str(tmp_path / "r.json"), "--table", str(tmp_path / "t.md"),
               "--table-reports", str(tmp_path / "bad.json")])
    assert rc == 2 and "bad.json" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "t.md").exists()


def test_cli_evaluate_intrinsics_file_corrects_to_the_lens(tmp_path, capsys):
    """Catches: ``--intrinsics`` not reaching the data set (a folder data set has no camera of its own, so nothing
    would be corrected), the reference lens lost when a checkpoint is saved and loaded, and ``lens_correction``
    missing from the report."""
    from SurgicalDepthLib.camera import Intrinsics
    from SurgicalDepthLib.checkpoints import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "lensed.safetensors",
                           DepthModel(make_config("vitt", reference_fov_deg=100.0)))
    write_folder_dataset(tmp_path / "data")
    calib = tmp_path / "scope.json"
    calib.write_text(json.dumps(Intrinsics.from_fov(56, 42, 150.0).to_dict()))
    reports = {}
    for name, extra in (("calibrated", ["--intrinsics", str(calib)]), ("plain", [])):
        out = tmp_path / f"{name}.json"
        rc = main(["evaluate", "--dataset", "folder", "--root", str(tmp_path / "data"), "--model", str(ckpt),
                   "--output", str(out), "--input-size", "56", "--device", "cpu", *extra])
        assert rc == 0, capsys.readouterr().err
        reports[name] = read_report(out)
    assert reports["calibrated"]["lens_correction"] == {"reference_fov_deg": 100.0, "n_images": 2}
    assert reports["plain"]["lens_correction"] is None
    assert reports["calibrated"]["metrics"]["abs_rel"] != reports["plain"]["metrics"]["abs_rel"]


def test_cli_evaluate_figure_shows_the_prediction_it_measured(tmp_path, capsys, monkeypatch):
    """Catches ``--figure`` drawing a metric model's raw output in its own unit: the report converts the official
    metric models' metres to the datasets' millimetres, the figure did not, so with ``--alignment none`` its
    prediction panel was 1000 times too near (clamped to the evaluation range's floor) whatever the scores said.
    Each figure row's prediction must give that image's reported errors."""
    from SurgicalDepthLib.checkpoints import save_checkpoint

    import SurgicalDepthTrainingLib.reports as reports
    from SurgicalDepthTrainingLib.metrics import compute_errors

    torch.manual_seed(0)
    model = DepthModel(make_config("vitt", head="metric", max_depth=0.2, metric_unit="m")).eval()
    ckpt = save_checkpoint(tmp_path / "metric.safetensors", model)
    write_folder_dataset(tmp_path / "data")
    rows = []
    monkeypatch.setattr(reports, "qualitative_figure", lambda r, path: rows.extend(r))
    out = tmp_path / "r.json"
    rc = main(["evaluate", "--dataset", "folder", "--root", str(tmp_path / "data"), "--model", str(ckpt),
               "--output", str(out), "--input-size", "56", "--device", "cpu", "--alignment", "none",
               "--max-depth", "150", "--figure", str(tmp_path / "f.png")])
    assert rc == 0, capsys.readouterr().err
    per_image = {r["name"].rsplit("/", 1)[-1]: r for r in read_report(out)["per_image"]}
    assert len(rows) == 2
    for row in rows:
        valid = row["valid"] & (row["gt"] > 1e-3) & (row["gt"] < 150)
        errors = compute_errors(row["gt"][valid], row["pred"][valid])
        assert errors["abs_rel"] == pytest.approx(per_image[row["name"]]["abs_rel"], rel=1e-6)


def test_evaluate_a_skip_bad_dataset_counts_no_image_twice(tmp_path):
    """Catches ``evaluate`` measuring the substitute that a ``skip_bad`` dataset returns for an unreadable pair
    (the next readable pair): with 3 pairs and the middle one corrupt, the report had n_images 3, the last image
    twice in ``per_image`` and in the mean. Now the bad pair is listed in ``skipped`` and still counts as a
    progress step."""
    from SurgicalDepthTrainingLib.datasets import open_dataset

    write_folder_dataset(tmp_path / "data", 3)
    (tmp_path / "data" / "depth" / "001.npy").write_text("not an array")
    dataset = open_dataset("folder", tmp_path / "data", skip_bad=True)
    torch.manual_seed(0)
    stream = io.StringIO()
    report = evaluate(DepthModel(make_config("vitt")).eval(), dataset, input_size=56, batch_size=2,
                      progress=ProgressReporter("jsonl", stream))
    names = [r["name"].rsplit("/", 1)[-1] for r in report["per_image"]]
    assert names == ["000.png", "002.png"] and report["n_images"] == 2
    assert [s.rsplit("/", 1)[-1] for s in report["skipped"]] == ["001.png"]
    assert json.loads(stream.getvalue().splitlines()[-1])["step"] == 3


class PlanesWithoutGroundTruth(Planes):
    """5 planes; image 1 has depth 0 everywhere, image 2 lies beyond the 150 mm cap, image 3 outside its mask."""

    def __init__(self):
        super().__init__(5)
        self.items[1] = dict(self.items[1], depth=np.zeros_like(self.items[1]["depth"]))
        self.items[2] = dict(self.items[2], depth=np.full_like(self.items[2]["depth"], 400.0))
        self.items[3] = dict(self.items[3], valid=np.zeros_like(self.items[3]["valid"]))


def test_evaluate_skips_and_counts_images_without_valid_ground_truth(tmp_path):
    """Catches one frame without a valid ground-truth pixel (all depth 0, all beyond the cap, or all outside the
    mask) stopping the whole evaluation with 'no valid pixel': such frames are skipped (monodepth2-style
    protocols leave them out), named in ``skipped`` / ``no_valid_gt``, counted in ``n_skipped``, left out of the
    mean, and still one progress step each."""
    torch.manual_seed(0)
    data, stream = PlanesWithoutGroundTruth(), io.StringIO()
    model = DepthModel(make_config("vitt")).eval()
    report = evaluate(model, data, input_size=56, batch_size=2, progress=ProgressReporter("jsonl", stream))
    bad = ["plane_001.png", "plane_002.png", "plane_003.png"]
    assert report["n_images"] == 2 and [r["name"] for r in report["per_image"]] == ["plane_000.png", "plane_004.png"]
    assert report["skipped"] == report["no_valid_gt"] == bad and report["n_skipped"] == 3
    good = [data.items[0], data.items[4]]
    expected = evaluate_predictions([(s["name"], model.infer_image(s["image"], 56), s["depth"], s["valid"])
                                     for s in good], pred_kind="disparity", min_depth=1e-3, max_depth=150.0)
    assert report["metrics"] == pytest.approx(expected["metrics"], rel=1e-5)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert events[-1]["step"] == events[-1]["total"] == 5
    assert read_report(write_report(report, tmp_path / "r.json"))["no_valid_gt"] == bad


def test_evaluate_with_no_measurable_image_names_the_skipped_ones():
    """Catches an evaluation where every image lacks valid ground truth failing as 'no images to evaluate'
    (which hid why): the one-line error says that all were skipped for it and names them."""
    s = plane(0)
    samples = [(f"f{i}.png", s["depth"], np.zeros_like(s["depth"]), None) for i in range(2)]
    with pytest.raises(ValueError, match=r"no image has a valid ground-truth pixel.*all 2 skipped \('f0\.png'"):
        evaluate_predictions(samples)


def test_cli_evaluate_passes_dataset_options(tmp_path, capsys):
    """Catches ``evaluate`` offering no way to give a loader its options: a ``folder`` data set of 16-bit PNG depth
    (the usual encoding) needs ``depth_scale``, so the command could only fail with "needs depth_scale=". Now
    ``--dataset-option depth_scale=0.01`` reads it (the same scores as the float copy), an unknown option or a
    malformed pair is a one-line error."""
    torch.manual_seed(0)
    write_folder_dataset(tmp_path / "npy", 2)
    (tmp_path / "png" / "depth").mkdir(parents=True)
    (tmp_path / "npy" / "rgb").rename(tmp_path / "png" / "rgb")
    for f in sorted((tmp_path / "npy" / "depth").glob("*.npy")):
        cv2.imwrite(str(tmp_path / "png" / "depth" / f"{f.stem}.png"), np.round(np.load(f) * 100).astype(np.uint16))
    common = ["evaluate", "--dataset", "folder", "--root", str(tmp_path / "png"), "--model",
              "random:surgical-depth-tiny", "--input-size", "56", "--device", "cpu", "--alignment", "none"]
    out = tmp_path / "r.json"
    assert main([*common, "--output", str(out), "--max-depth", "100", "--dataset-option", "depth_scale=0.01",
                 "--dataset-option", "require_16bit=true"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    report = read_report(out)
    assert report["n_images"] == 2 and report["depth_range"][1] < 100
    for bad, message in ((["--dataset-option", "nosuch=1"], "unknown option(s) ['nosuch']"),
                         (["--dataset-option", "depth_scale"], "expected KEY=VALUE"),
                         (["--dataset-option", "intrinsics=scope.json"], "--intrinsics FILE"),
                         (["--dataset-option", "side=left", "--dataset-option", "side=right"], "given twice")):
        rc = main([*common, "--output", str(tmp_path / "bad.json"), *bad])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and message in err and not (tmp_path / "bad.json").exists()


def test_cli_evaluate_figure_leaves_out_a_frame_without_ground_truth(tmp_path, capsys):
    """Catches ``evaluate --figure`` failing (exit 2, no report) when a frame the figure shows has no valid
    ground-truth pixel, although the evaluation itself skips and counts that frame: the figure shows the others."""
    torch.manual_seed(0)
    write_folder_dataset(tmp_path / "data", 3)
    far = np.load(tmp_path / "data" / "depth" / "001.npy")
    np.save(tmp_path / "data" / "depth" / "001.npy", np.where(far > 0, 500.0, 0).astype(np.float32))  # past the cap
    out = tmp_path / "r.json"
    assert main(["evaluate", "--dataset", "folder", "--root", str(tmp_path / "data"), "--model",
                 "random:surgical-depth-tiny", "--input-size", "56", "--device", "cpu", "--max-depth", "100",
                 "--output", str(out), "--figure", str(tmp_path / "f.png")]) == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["n_images"] == 2 and [n.rsplit("/", 1)[-1] for n in report["no_valid_gt"]] == ["001.png"]
    assert cv2.imread(str(tmp_path / "f.png")) is not None
