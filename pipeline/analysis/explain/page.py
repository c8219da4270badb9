"""The explain outputs on disk: each picture as a PNG file and all of them, captioned, in one self-contained
index.html (pipeline/report/html_page.py)."""
from __future__ import annotations

from pathlib import Path

from pipeline.analysis.explain.inputs import Picture
from pipeline.analysis.explain.methods import Refusal
from pipeline.report.html_page import HtmlPage, figure_png

PAGE = "index.html"


def write_explain_outputs(out: Path, title: str, pictures: list[Picture], refusals: list[Refusal],
                          notes: list[str]) -> Path:
    """Writes out/<picture.file> for each picture and out/index.html; returns the page's path."""
    page = HtmlPage(title)
    for note in notes:
        page.paragraph(note, note=True)
    section = None
    for picture in pictures:
        if picture.section != section:
            section = picture.section
            page.heading(section)
        png = figure_png(picture.figure)
        path = out / picture.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        page.image(png, f"{picture.caption} ({picture.file})")
        if picture.numbers:
            page.table(["measure", "value"], [[key, value] for key, value in picture.numbers.items()])
    if refusals:
        page.heading("Not applicable here")
        page.table(["method", "task", "why"], [[r.method, r.task or "-", r.reason] for r in refusals])
    return page.write(out / PAGE)
