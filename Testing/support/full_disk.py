"""A stand-in for ``open`` whose files find the disk full on every write (errno ENOSPC), for tests of the one-line
"disk full while writing FILE" errors. Everything else (lock, seek, truncate, close) is the real file's."""
from __future__ import annotations

import builtins
import errno


class FullDiskFile:
    """``FullDiskFile(*open_args)``: the real file, except that ``write`` raises ``OSError(ENOSPC)``."""

    def __init__(self, *args):
        self.file = builtins.open(*args)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
