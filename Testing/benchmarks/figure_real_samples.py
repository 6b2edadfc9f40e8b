"""README figure: the default model on real colonoscopy frames (Kvasir-SEG / HyperKvasir, CC BY 4.0).

Writes ``Resources/Figures/real_colonoscopy.png``: each row is an input frame, the scope's field of view found by
``sd.detect_fov_mask`` (outside tinted blue: black frame, overlay text, blanked boxes) and the depth predicted by
``sd.depth_stream`` with its default ``fov_mask="auto"`` (red = near, blue = far; black = no depth). Images are read from
../shared/samples/real/images (not redistributed here beyond this derived figure, which credits its source).
``--compare SRC`` adds a column with another model's depth (e.g. the previous default model, from git history).
Usage: ``python Testing/benchmarks/figure_real_samples.py [--model SRC] [--compare SRC --compare-label TEXT]``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
FILES = ("kseg_cju0qkwl35piu0993l0dewei2.jpg", "kseg_cju0qx73cjw570799j4n5cjze.jpg",
         "kseg_cju0roawvklrq0799vmjorwfv.jpg")


def main() -> None:
    import SurgicalDepthLib as sd
    from SurgicalDepthLib.atomic_io import atomic_path
    from SurgicalDepthTrainingLib.reports import label_tile

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default", help="model source")
    ap.add_argument("--compare", default=None, help="another model source, shown in a fourth column")
    ap.add_argument("--compare-label", default="other model", help="title of the fourth column")
    ap.add_argument("--images", type=Path, default=REPO.parent / "shared" / "samples" / "real" / "images",
                    help="folder with the Kvasir-SEG frames")
    ap.add_argument("--output", type=Path, default=REPO / "Resources" / "Figures" / "real_colonoscopy.png",
                    help="figure file")
    args = ap.parse_args()
    model = sd.load_model(args.model, device="cpu")
    other = sd.load_model(args.compare, device="cpu") if args.compare else None
    rows = []
    for name in FILES:
        rgb = sd.read_image(args.images / name)
        rgb = cv2.resize(rgb, (320, round(320 * rgb.shape[0] / rgb.shape[1])), interpolation=cv2.INTER_AREA)
        (frame,) = sd.depth_stream(model, [rgb])
        fov = frame.fov_mask if frame.fov_mask is not None else np.ones(rgb.shape[:2], bool)
        tinted = rgb.copy()
        tinted[~fov] = (0.35 * tinted[~fov] + 0.65 * np.array([40, 90, 255])).astype(np.uint8)
        color = sd.colorize(frame.depth_mm, "depth", mask=frame.valid)
        tiles = [label_tile(rgb, "Kvasir-SEG frame"), label_tile(tinted, "field of view (auto)"),
                 label_tile(color, "predicted depth")]
        if other is not None:
            (theirs,) = sd.depth_stream(other, [rgb])
            tiles.append(label_tile(sd.colorize(theirs.depth_mm, "depth", mask=theirs.valid), args.compare_label))
        rows.append(np.hstack(tiles))
    width = max(r.shape[1] for r in rows)
    figure = np.vstack([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows])
    with atomic_path(args.output) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(figure, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
