"""Every entry of a split checked cheaply before training, so no work is lost to a file that was never readable.

`screen(dataset)` runs each reader's `check_files` (headers and sizes, not pixels: datasets/image_header.py) on
every entry of a reader, or of each reader of a mixture. What it finds depends on the reader's `skip_invalid`:
without it, the bad entries are returned, named, and nothing changes (the caller refuses to train); with it,
they are dropped from the reader (counted in `skipped["images"]`, reasons in `problems`, logged once), so the
loader never meets them, and nothing is returned.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasets.mixture import MixtureDataset


@dataclass
class Unreadable:
    """An entry whose files would not read."""
    source: str      # the split, or the mixture source's name (as datasets.inspection names it)
    where: str       # its reader's annotation file or dataset folder
    path: Path       # its image file
    reason: str      # the reader's error: names the file and what was expected


def screen(dataset, split: str) -> list[Unreadable]:
    """Check every entry; return the bad ones of readers without skip_invalid, drop those of readers with it."""
    readers = list(getattr(dataset, "datasets", [dataset]))
    names = list(getattr(dataset, "names", [split] * len(readers)))
    found = []
    for reader, name in zip(readers, names):
        bad = bad_entries(reader)
        if bad and reader.skip_invalid:
            reader.drop(bad)
        else:
            found += [Unreadable(name, reader.where(), reader.image_path(position), str(error))
                      for position, error in bad.items()]
    if isinstance(dataset, MixtureDataset):
        dataset.sources_changed()
    return found


def bad_entries(reader) -> dict[int, Exception]:
    """position -> why, for every entry whose files fail the reader's cheap check."""
    bad = {}
    for position in range(len(reader)):
        try:
            reader.check_files(position)
        except (OSError, ValueError) as error:
            bad[position] = error
    return bad
