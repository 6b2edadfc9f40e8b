"""``surgical-depth evaluate``: metrics of a model on a dataset -> JSON report (+ optional table and figure).

Output files (``--output``, ``--table``, ``--figure``) are checked before anything runs: an existing file is
replaced only with ``--overwrite``, and a file inside the dataset root or an input folder (a Hugging Face model
folder), or one of the input files (the model, ``--table-reports``, ``--intrinsics``), is never written,
``--overwrite`` or not: a dataset's own files are never a valid output.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from SurgicalDepthLib.cli import (DETAIL_SIZE_HELP, DEVICE_HELP, INPUT_SIZE_HELP, add_model_source_args, input_size_arg,
                                 model_hints, progress_of)
from SurgicalDepthLib.run_folder import OutputConflict

from ._dataset_options import DATASET_OPTION_HELP, dataset_option, dataset_options

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    from SurgicalDepthTrainingLib.metrics import ALIGNMENTS

    p = subparsers.add_parser("evaluate", help="measure a depth model on a dataset (JSON metrics report)",
                              description="Predict every image of a dataset and compute AbsRel, SqRel, RMSE, "
                                          "RMSE log and delta accuracies per image after per-image alignment "
                                          "(monodepth2 protocol); the report holds their means and the "
                                          "per-image values.")
    p.add_argument("--dataset", required=True, help="dataset loader name (e.g. c3vd, scared, synthetic, folder)")
    p.add_argument("--root", required=True, type=Path, help="dataset root folder (or one of its sequences)")
    add_model_source_args(p)
    p.add_argument("--alignment", choices=ALIGNMENTS, default="median",
                   help="per-image alignment before measuring (default median; 'none' for metric models)")
    p.add_argument("--output", required=True, type=Path, help="report file (.json)")
    p.add_argument("--split", default=None, help="dataset split (loader-specific; default everything found)")
    p.add_argument("--input-size", type=input_size_arg, default=None, help=INPUT_SIZE_HELP)
    p.add_argument("--detail-size", type=input_size_arg, default=None, help=DETAIL_SIZE_HELP)
    p.add_argument("--min-depth", type=_depth_bound, default=None,
                   help="evaluation range lower bound in the dataset's unit (default: the dataset's)")
    p.add_argument("--max-depth", type=_depth_bound, default=None,
                   help="evaluation range upper bound in the dataset's unit (default: the dataset's)")
    p.add_argument("--batch-size", type=int, default=1, help="images predicted together (default 1)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--intrinsics", type=Path, default=None,
                   help="calibration file of the dataset's camera (OpenCV YAML/XML/JSON, any distortion model, or "
                        "OCamCalib's calib_results.txt), "
                        "for data sets that do not carry one (e.g. c3vd, folder)")
    p.add_argument("--dataset-option", dest="dataset_options", type=dataset_option, action="append", default=[],
                   metavar="KEY=VALUE", help=DATASET_OPTION_HELP)
    p.add_argument("--no-lens-correction", dest="lens_correction", action="store_false",
                   help="evaluate the raw output: do not correct predictions to the samples' lens (a model with a "
                        "reference lens, such as the default model, is corrected where intrinsics are known)")
    p.add_argument("--table", type=Path, default=None,
                   help="also write a Markdown table (.md) in the layout of the paper's Table 1 (datasets as "
                        "columns, AbsRel and delta1 rows per model)")
    p.add_argument("--table-reports", type=Path, nargs="+", default=(), metavar="JSON",
                   help="earlier reports (other datasets/splits/models) to include in --table")
    p.add_argument("--figure", type=Path, default=None,
                   help="also write a PNG of RGB | ground truth | prediction for up to 4 images")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing --output/--table/--figure files (never a file of the dataset or "
                        "another input)")
    p.set_defaults(func=run)


_OUTPUT_FLAGS = (("--output", "output", ".json"), ("--table", "table", ".md"), ("--figure", "figure", ".png"))


def _outputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    return [(flag, getattr(args, name)) for flag, name, _ in _OUTPUT_FLAGS if getattr(args, name) is not None]


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse outputs that would overwrite the dataset, an input, or (without ``--overwrite``) any existing file."""
    for flag, name, suffix in _OUTPUT_FLAGS:
        path = getattr(args, name)
        if path is not None and path.suffix.lower() != suffix:
            raise ValueError(f"{flag} must be a {suffix} file, got {path}")
        if path is not None and not path.parent.is_dir():
            raise FileNotFoundError(f"{flag} folder {path.parent} does not exist")
    model = Path(args.model)
    folders = [("the dataset root --root", args.root)]
    files = [("--table-reports", p) for p in args.table_reports]
    if args.intrinsics is not None:
        files.append(("the calibration --intrinsics", args.intrinsics))
    if model.is_dir():  # a Hugging Face model folder
        folders.append(("the model folder --model", model))
    elif model.is_file():
        files.append(("the model --model", model))
    seen: dict[Path, str] = {}
    for flag, path in _outputs(args):
        target = path.resolve()
        for what, folder in folders:
            if target == folder.resolve() or folder.resolve() in target.parents:
                raise OutputConflict(f"{flag} {path} lies inside {what} ({folder}): a dataset's own files are "
                                     "never a valid output (not even with --overwrite); write it elsewhere")
        for what, file in files:
            if target == file.resolve():
                raise OutputConflict(f"{flag} {path} is {what}, an input of this run; outputs never overwrite "
                                     "inputs (not even with --overwrite)")
        if target in seen:
            raise OutputConflict(f"{flag} and {seen[target]} are the same file {path}")
        seen[target] = flag
        if path.is_dir():
            raise OutputConflict(f"{flag} {path} is a folder, expected a file")
        _refuse_existing(flag, path, args.overwrite)


def _refuse_existing(flag: str, path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputConflict(f"{flag} {path} exists; nothing was overwritten: pass --overwrite to replace it or "
                             "choose another file")


def _depth_bound(text: str) -> float:
    """``--min-depth`` / ``--max-depth``: a finite number > 0 (``inf`` wrote a cap of null into the report, a
    negative one let every prediction through; ``nan`` failed only after the model had predicted an image)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _dataset_options(args: argparse.Namespace) -> dict[str, object]:
    """The loader options: ``--dataset-option`` pairs (each key once) plus ``--intrinsics``."""
    options = dataset_options(args.dataset_options)
    if "intrinsics" in options:  # an input file: --intrinsics is checked against the outputs
        raise ValueError("give the calibration file as --intrinsics FILE, not --dataset-option intrinsics=")
    if args.intrinsics is not None:
        options["intrinsics"] = args.intrinsics
    return options


def _figure_rows(model, dataset, report: dict, args: argparse.Namespace, n: int = 4) -> list[dict]:
    import numpy as np
    from SurgicalDepthLib.lens import SampleLensCorrection

    from SurgicalDepthTrainingLib.evaluation import output_to_mm
    from SurgicalDepthTrainingLib.metrics import NoValidPixelError, align_prediction

    lo, hi = report["eval_range"]
    rows, lens, to_mm = [], SampleLensCorrection(model, args.lens_correction), output_to_mm(model)
    for i in np.unique(np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(int)):
        sample = dataset[int(i)]  # the prediction as evaluate() measured it: in mm, corrected to the lens
        pred = lens(sample, model.infer_image(sample["image"], args.input_size, args.detail_size) * to_mm)
        try:
            depth, _, _, _ = align_prediction(pred, sample["depth"], sample.get("valid"),
                                              alignment=report["alignment"], pred_kind=model.output_kind,
                                              min_depth=lo, max_depth=hi)
        except NoValidPixelError:  # not measured (the report's no_valid_gt): nothing to show
            continue
        rows.append({"image": sample["image"], "gt": sample["depth"], "pred": depth, "valid": sample.get("valid"),
                     "name": Path(str(sample.get("name", i))).name})
    return rows


def run(args: argparse.Namespace) -> int:
    for path in args.table_reports:
        if not path.is_file():
            raise FileNotFoundError(f"--table-reports {path} does not exist")
    if not args.root.exists():
        raise FileNotFoundError(f"--root {args.root} does not exist")
    if args.intrinsics is not None and not args.intrinsics.is_file():
        raise FileNotFoundError(f"--intrinsics {args.intrinsics} does not exist")
    if args.min_depth is not None and args.max_depth is not None and not args.min_depth < args.max_depth:
        raise ValueError(f"--min-depth {args.min_depth:g} must be below --max-depth {args.max_depth:g}")
    _check_outputs(args)  # before the model loads and the evaluation runs: a refused output fails at once

    import SurgicalDepthLib as sd

    from SurgicalDepthTrainingLib.datasets import open_dataset
    from SurgicalDepthTrainingLib.evaluation import evaluate
    from SurgicalDepthTrainingLib.reports import (markdown_table, qualitative_figure, read_report, write_report,
                                                  write_table)

    earlier_reports = [read_report(p) for p in args.table_reports]  # a bad one fails before anything is written
    dataset = open_dataset(args.dataset, args.root, args.split, **_dataset_options(args))
    model = sd.load_model(args.model, device=args.device, **model_hints(args))
    report = evaluate(model, dataset, alignment=args.alignment, input_size=args.input_size,
                      min_depth=args.min_depth, max_depth=args.max_depth, batch_size=args.batch_size,
                      progress=progress_of(args), lens_correction=args.lens_correction,
                      detail_size=args.detail_size)
    report["dataset"] = args.dataset.lower()  # the registry's name (matched case-insensitively): one table column
    report["root"] = str(args.root)
    report["model"] = args.model
    report["split"] = args.split
    rows = _figure_rows(model, dataset, report, args) if args.figure is not None else None
    for flag, path in _outputs(args):  # again: a file may have appeared while the evaluation ran
        _refuse_existing(flag, path, args.overwrite)
    write_report(report, args.output)
    if args.table is not None:
        by_model: dict[str, list[dict]] = {}
        for earlier in earlier_reports + [report]:
            by_model.setdefault(Path(str(earlier.get("model", "?"))).name, []).append(earlier)
        write_table(markdown_table(by_model), args.table)
    if rows is not None:
        qualitative_figure(rows, args.figure)
    m = report["metrics"]
    print(f"{args.dataset}: {report['n_images']} images, AbsRel {m['abs_rel']:.4f}, delta1 {m['a1']:.4f} "
          f"-> {args.output}")
    args.result = {"report": str(args.output), "n_images": report["n_images"], "abs_rel": m["abs_rel"],
                   "a1": m["a1"], **({"figure": str(args.figure)} if args.figure is not None else {})}
    return 0
