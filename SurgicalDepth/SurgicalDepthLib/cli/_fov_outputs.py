"""Field-of-view outputs shared by ``predict`` and ``reconstruct``: the ``--fov-mask`` argument (keeping a mask
file's name for errors), the check that a mask file fits the frames, and the mask files a run writes as the scope
image moves."""
from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ..fov import write_fov_mask
from ..run_folder import RunFolder
from ..stream import DepthFrame
from . import CliError, fov_mask_arg


def same_mask(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two field-of-view masks (bool ``[H, W]`` or None) are the same."""
    return a is b or (a is not None and b is not None and np.array_equal(a, b))


class FovMaskAction(argparse.Action):
    """``--fov-mask auto|none|FILE`` parsed by :func:`fov_mask_arg` (``"auto"``, None or bool ``[H, W]``), and the
    text of a FILE kept as ``fov_mask_file`` (None otherwise), so that an error about the mask can name the file."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        try:
            mask = fov_mask_arg(values)
        except argparse.ArgumentTypeError as exc:  # argparse's own wording for a bad type=
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest, mask)
        namespace.fov_mask_file = values if isinstance(mask, np.ndarray) else None


def check_fov_mask_fits(args: argparse.Namespace, size: tuple[int, int], source: Any) -> None:
    """A ``--fov-mask FILE`` (bool ``[h, w]``) that does not fit the frames of ``source`` (``size = (H, W)`` pixels):
    CliError naming the flag, the file and the input, before that input is predicted."""
    mask = args.fov_mask
    if not isinstance(mask, np.ndarray) or mask.shape == tuple(size):
        return
    name = getattr(args, "fov_mask_file", None) or "FILE"
    raise CliError(f"--fov-mask {name} is {mask.shape[1]}x{mask.shape[0]} pixels but input {source} is "
                   f"{size[1]}x{size[0]} (width x height): a mask file must have the size of the frames it masks")


class FovMaskFiles:
    """The field-of-view masks of one sequence, written into a run folder as they change: ``fov_mask.png`` the
    first one (bool ``[H, W]``, 255 = tissue), then ``fov_mask_<index:06d>.png`` from each frame whose mask differs
    from the one before (``depth_stream`` follows a scope image that moves in the frame). :attr:`records` lists
    them in order, ``{"from_frame": source frame index, "file": name}`` (``file`` None: from that frame on, no
    mask). Each file is claimed when it is written: which frames change is known only then."""

    def __init__(self, out: RunFolder, folder: str = "") -> None:
        self.out, self.prefix = out, f"{folder}/" if folder else ""
        self.records: list[dict[str, Any]] = []
        self._last: np.ndarray | None = None

    def add(self, frame: DepthFrame) -> None:
        """Write ``frame.fov_mask`` when it is the first mask or differs from the last one written."""
        mask = frame.fov_mask
        if same_mask(mask, self._last):
            return
        name = None
        if mask is not None:
            name = "fov_mask.png" if not self.records else f"fov_mask_{frame.index:06d}.png"
            write_fov_mask(self.out.path(self.prefix + name), mask)
        self.records.append({"from_frame": int(frame.index), "file": name})
        self._last = mask
