"""Grids of images and heat maps for the explain pages: matplotlib Figures (no pyplot), small cells."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from pipeline.tracking.plots import picture

CELL_INCHES = 1.5


@dataclass
class Cell:
    image: Tensor | None = None         # [C, H, W] in [0, 1], shown as the input is
    heat: Tensor | np.ndarray | None = None   # [H, W]: drawn over `image` in grey, or alone
    title: str = ""
    box: Tensor | None = None           # [4] xyxy: outlined
    signed: bool = False                # heat around zero (blue lowers, red raises), else from its minimum


def grid(rows: list[list[Cell]], column_titles: list[str] | None = None) -> Figure:
    columns = max(len(row) for row in rows)
    figure = Figure(figsize=(CELL_INCHES * columns, CELL_INCHES * len(rows) + 0.3), layout="constrained", dpi=100)
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(columns):
            axes[r][c].set_axis_off()
            if c < len(row):
                _draw(axes[r][c], row[c])
            if r == 0 and column_titles and c < len(column_titles):
                axes[r][c].set_title(column_titles[c] + ("\n" + row[c].title if c < len(row) and row[c].title else ""),
                                     fontsize="small")
    return figure


def _draw(axes, cell: Cell) -> None:
    if cell.image is not None:
        shown = picture(cell.image)
        if cell.heat is not None:   # the heat map is what matters: the image only as a faint grey guide
            shown = shown if shown.ndim == 2 else shown.mean(axis=2)
            axes.imshow(shown, cmap="gray", vmin=0, vmax=1, alpha=0.5)
        else:
            axes.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
    if cell.heat is not None:
        heat = cell.heat.detach().float().cpu().numpy() if isinstance(cell.heat, Tensor) else np.asarray(cell.heat)
        if cell.signed:
            limit = float(np.abs(heat).max()) or 1.0
            axes.imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.7 if cell.image is not None else 1.0)
        else:
            axes.imshow(heat, cmap="jet", alpha=0.55 if cell.image is not None else 1.0)
    if cell.box is not None:
        x1, y1, x2, y2 = (float(v) for v in cell.box)
        axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.2))
    if cell.title:
        axes.set_title(cell.title, fontsize="x-small")

