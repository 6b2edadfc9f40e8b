"""How many pages a TIFF file holds, from its image file directories (IFDs), without decoding any image.

OpenCV's ``imdecode`` returns the first page of a multi-page TIFF (a stack of frames saved by ImageJ, a microscope or
a frame grabber) and says nothing of the others; :func:`SurgicalDepthLib.video.read_image` counts the pages first.
Layout from the TIFF 6.0 specification (section 2: header, IFD chain; section 8: NewSubfileType, SubfileType) and
the BigTIFF extension (version 43, 8-byte counts and offsets).
"""
from __future__ import annotations

import struct

#: NewSubfileType (bit 0: a reduced-resolution version of another image, e.g. a thumbnail or a pyramid level)
_NEW_SUBFILE_TYPE = 254
#: SubfileType (old style): 2 = reduced-resolution image
_SUBFILE_TYPE = 255
#: IFDs read at most (a damaged file's chain could be very long)
_MAX_IFDS = 100_000


def _layout(data: bytes) -> tuple[str, int, str, int, int, int] | None:
    """``(byte order, first IFD offset, count format, entry size, value offset in an entry, next-offset format)``
    of a TIFF header (``"<"``/``">"`` struct byte order), or None when ``data`` is no TIFF."""
    if len(data) < 16 or data[:2] not in (b"II", b"MM"):
        return None
    order = "<" if data[:2] == b"II" else ">"
    version = struct.unpack_from(order + "H", data, 2)[0]
    if version == 42:
        return order, struct.unpack_from(order + "I", data, 4)[0], "H", 12, 8, "I"
    if version == 43:
        return order, struct.unpack_from(order + "Q", data, 8)[0], "Q", 20, 12, "Q"
    return None


def _is_reduced(data: bytes, order: str, start: int, count: int, entry: int, value_at: int) -> bool:
    """Whether the IFD whose ``count`` entries begin at ``start`` marks a reduced-resolution image."""
    for k in range(count):
        at = start + k * entry
        tag, kind = struct.unpack_from(order + "HH", data, at)
        if tag not in (_NEW_SUBFILE_TYPE, _SUBFILE_TYPE):
            continue
        value = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, at + value_at)[0]
        if (tag == _NEW_SUBFILE_TYPE and value & 1) or (tag == _SUBFILE_TYPE and value == 2):
            return True
    return False


def tiff_page_count(data: bytes) -> int:
    """Number of full-resolution pages in the TIFF file ``data`` (its bytes): the IFDs of its chain that are not
    marked reduced-resolution (thumbnails and pyramid levels are no pages). 0 when ``data`` is no TIFF; a damaged
    chain counts the pages read up to the damage."""
    layout = _layout(data)
    if layout is None:
        return 0
    order, offset, count_format, entry, value_at, next_format = layout
    count_size, next_size = struct.calcsize(count_format), struct.calcsize(next_format)
    pages, seen = 0, set()
    while offset and offset not in seen and len(seen) < _MAX_IFDS:
        seen.add(offset)
        if offset + count_size > len(data):
            break
        count = struct.unpack_from(order + count_format, data, offset)[0]
        start = offset + count_size
        if start + count * entry + next_size > len(data):
            break
        pages += not _is_reduced(data, order, start, count, entry, value_at)
        offset = struct.unpack_from(order + next_format, data, start + count * entry)[0]
    return pages
