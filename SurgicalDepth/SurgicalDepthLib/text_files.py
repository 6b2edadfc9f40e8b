"""Reading the small text files users hand over (calibrations, pose lists) with errors that name them."""
from __future__ import annotations

import codecs
import os
from pathlib import Path

__all__ = ["read_text_file"]


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """The text of ``path``: UTF-8, with or without a byte-order mark (Notepad writes one), or UTF-16 with its mark
    (Windows PowerShell 5's ``>``). ``what`` names the file in errors (``"poses file"``).

    Raises:
        FileNotFoundError: no such file (or not a file). ValueError: not UTF-8 text (a video or image given by
            mistake), naming the file and the first bad byte — Python's own message names only the codec.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {path} is not a text file (byte {exc.start}: {exc.reason})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text-mode reading gives
