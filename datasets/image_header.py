"""Will this image file decode, and at what size? Answered from its header, not its pixels.

`header_size(path)` is the (height, width) `read_image` would return, read the way `decode` reads the file:
tifffile for TIFF, PIL's header parser for the rest, EXIF orientation applied alike (a quarter turn swaps
the sides). It raises ValueError naming the file for what decoding would refuse:

- a file PIL (or tifffile) cannot parse as an image: non-image bytes, a header cut short;
- a file cut short after its header, where OpenCV refuses it too: a PNG must end with its IEND chunk, a
  TIFF's image data must lie inside the file. A JPEG cut short still decodes (grey at the bottom), so its end
  is not checked;
- a TIFF that is not one 2-D image (a z-stack, a time series).

Where the header cannot vouch for a file (a format PIL does not parse, a TIFF tifffile cannot, a PNG without
its end), the file is decoded in full and decoding has the last word, so the check never refuses a file that
reads. What it cannot see: pixel data damaged inside a complete file; reading the image reports that.
"""
from __future__ import annotations

from pathlib import Path

import tifffile
from PIL import Image

from datasets.image_io import TIFF_SUFFIXES, decode, exif_orientation_of, tiff_plane_axes

QUARTER_TURNS = (5, 6, 7, 8)     # EXIF orientations that transpose the picture
PNG_END = b"IEND\xaeB`\x82"      # the IEND chunk's type and CRC: how every complete PNG ends
PNG_TAIL_BYTES = 4096            # where IEND is looked for: some tools append a little after it, decoders don't care


def header_size(path: Path, exif_orientation: bool = True) -> tuple[int, int]:
    """(height, width) of the image as read, from the header; raises ValueError naming the file (module
    docstring)."""
    path = Path(path)
    found = _tiff_header(path) if path.suffix.lower() in TIFF_SUFFIXES else _pil_header(path)
    if found is None:  # the header cannot vouch for the file: decode() decides, and names the file if it fails
        height, width = decode(path, exif_orientation).shape[:2]
        return int(height), int(width)
    height, width, orientation = found
    return (width, height) if exif_orientation and orientation in QUARTER_TURNS else (height, width)


def _pil_header(path: Path) -> tuple[int, int, int] | None:
    """(height, width, EXIF orientation), or None when PIL cannot parse the file or a PNG lacks its end."""
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            orientation = exif_orientation_of(opened)
            complete = opened.format != "PNG" or _png_ends(path)
    except Exception:  # PIL raises many types (OSError, SyntaxError, struct.error...) for files it cannot parse
        return None
    return (height, width, orientation) if complete else None


def _png_ends(path: Path) -> bool:
    with open(path, "rb") as file:
        file.seek(0, 2)
        file.seek(max(0, file.tell() - PNG_TAIL_BYTES))
        return PNG_END in file.read()


def _tiff_header(path: Path) -> tuple[int, int, int] | None:
    """(height, width, EXIF orientation) of the first series, or None when tifffile cannot parse it or its
    image data runs past the end of the file. A series that is not one image raises, as decoding does."""
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            shape, axes = tuple(series.shape), series.axes
            end = max((offset + count for page in series.pages if page is not None
                       for offset, count in zip(page.dataoffsets, page.databytecounts)), default=0)
    except Exception:  # tifffile raises many types for corrupt or exotic files; decode() may still read it
        return None
    if end > path.stat().st_size or "Y" not in axes or "X" not in axes:
        return None
    tiff_plane_axes(shape, axes, path)
    return shape[axes.index("Y")], shape[axes.index("X")], _orientation(path)


def _orientation(path: Path) -> int:
    """As decode() finds it for a TIFF: PIL's reading of the tag, 1 where PIL cannot open the file."""
    try:
        with Image.open(path) as opened:
            return exif_orientation_of(opened)
    except Exception:  # see _pil_header
        return 1
