"""Contact sheet PNG and the depth colour map (red = near, blue = far)."""
from __future__ import annotations

import cv2
import numpy as np

from SurgicalDepthTrainingLib.synthetic import contact_sheet, depth_to_color


def test_depth_to_color_near_red_far_blue():
    depth = np.tile(np.linspace(10.0, 100.0, 50, dtype=np.float32), (4, 1))
    valid = np.ones_like(depth, bool)
    valid[:, 25] = False
    rgb = depth_to_color(depth, valid)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 50, 3)
    assert rgb[0, 0, 0] > 100 and rgb[0, 0, 2] < 50      # near: red
    assert rgb[0, -1, 2] > 100 and rgb[0, -1, 0] < 50    # far: blue
    assert (rgb[:, 25] == 0).all()                        # invalid: black


def test_contact_sheet_png(tmp_path):
    out = contact_sheet(tmp_path / "sheet.png", organs=("colon", "surgical_field"), columns=2, height=24, width=32,
                        frame_index=0)
    img = cv2.imread(str(out))
    assert img.shape == (2 * (22 + 2 * 24), 2 * 32, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]
