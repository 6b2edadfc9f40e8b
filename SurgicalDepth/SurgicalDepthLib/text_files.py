"""Reading the small text files users hand over (calibrations, pose lists) with errors that name them."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["read_text_file"]


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of ``path``. ``what`` names the file in errors (``"poses file"``).

    Raises:
        FileNotFoundError: no such file (or not a file). ValueError: not UTF-8 text (a video or image given by
            mistake), naming the file and the first bad byte — Python's own message names only the codec.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {path} is not a text file (byte {exc.start}: {exc.reason})") from None
