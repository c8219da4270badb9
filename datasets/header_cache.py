"""`header_size` answered once per file, however many entries name it.

A COCO file may name one image file from many entries (tiles, augmented copies, a benchmark's reused
images), and the training guard checks the header of every entry (datasets/screening.py): without this,
each entry reads its file again. The same file gives the same header, so the answer is kept per file, the
file known by what `stat` says of it (device, inode, size, modification and change times): a file replaced
or rewritten since is read again. Only answers are kept; a file that fails is read (and fails) each time,
naming itself as `header_size` does.
"""
from __future__ import annotations

import os
from pathlib import Path

from datasets.image_header import header_size

MAX_ENTRIES = 4096  # a dataset of distinct files gains nothing here; bound what it costs it


class HeaderCache:
    def __init__(self) -> None:
        self._sizes: dict[tuple, tuple[int, int]] = {}

    def size(self, path: Path, exif_orientation: bool = True) -> tuple[int, int]:
        """(height, width) as `header_size(path, exif_orientation)` gives it."""
        try:
            found = os.stat(path)
        except OSError:
            return header_size(path, exif_orientation)  # which says, naming the file, what is wrong
        key = (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns, exif_orientation)
        if key not in self._sizes:
            if len(self._sizes) >= MAX_ENTRIES:
                self._sizes.clear()
            self._sizes[key] = header_size(path, exif_orientation)
        return self._sizes[key]
