"""One self-contained HTML page: headings, text, captioned images, tables and preformatted text.

Images are inlined as data: URIs and the style sheet sits in the page, so it opens offline, from a copied
folder and from an MLflow artifact view alike; nothing refers to another host. Links may only be relative
(files beside the page), so a page never sends its reader elsewhere."""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from matplotlib.figure import Figure
from PIL import Image

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 72rem; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
h3 { font-size: 1.05rem; margin-top: 1.2rem; }
figure { display: inline-block; margin: .5rem 1rem .8rem 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #555; max-width: 40rem; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: .2rem .5rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
pre { background: #f6f6f6; padding: .6rem; overflow-x: auto; font-size: .75rem; }
p.note { color: #666; font-size: .85rem; }
table.facts td { text-align: left; }
details summary { cursor: pointer; margin: .5rem 0; }
"""
DPI = 100


def figure_png(figure: Figure, dpi: int = DPI) -> bytes:
    """A matplotlib figure as PNG bytes (Agg, no display), in a 256-colour palette: a third of the size of
    full colour for heat maps and image grids, which pages inline by the dozen, with no visible loss."""
    rendered = io.BytesIO()
    figure.savefig(rendered, format="png", dpi=dpi)
    rendered.seek(0)
    buffer = io.BytesIO()
    Image.open(rendered).convert("RGB").quantize(colors=256).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@dataclass
class HtmlPage:
    title: str
    blocks: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, note: bool = False) -> None:
        css = ' class="note"' if note else ""
        self.blocks.append(f"<p{css}>{html.escape(text)}</p>")

    def image(self, png: bytes, caption: str) -> None:
        """A PNG, inlined, with its caption (also its alt text)."""
        data = base64.b64encode(png).decode("ascii")
        text = html.escape(caption)
        self.blocks.append(f'<figure><img src="data:image/png;base64,{data}" alt="{text}">'
                           f"<figcaption>{text}</figcaption></figure>")

    def table(self, header: list[str], rows: list[list[object]]) -> None:
        head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(cell))}</td>" for cell in row) + "</tr>"
                       for row in rows)
        self.blocks.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def facts(self, rows: list[tuple[str, object]]) -> None:
        """A two-column table of names and values, without a header."""
        body = "".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(_cell(value))}</td></tr>"
                       for name, value in rows)
        self.blocks.append(f'<table class="facts"><tbody>{body}</tbody></table>')

    def preformatted(self, text: str, folded: str | None = None) -> None:
        """Text as is; with `folded`, inside a closed <details> whose summary line is `folded` (long text)."""
        block = f"<pre>{html.escape(text)}</pre>"
        if folded is not None:
            block = f"<details><summary>{html.escape(folded)}</summary>{block}</details>"
        self.blocks.append(block)

    def link(self, href: str, text: str) -> None:
        """A link to a file beside the page; absolute URLs are refused (the page must not lead elsewhere)."""
        parts = urlsplit(href)
        if parts.scheme or parts.netloc or href.startswith("/"):
            raise ValueError(f"link {href!r}: only relative links to files beside the page are allowed")
        self.blocks.append(f'<p><a href="{html.escape(href)}">{html.escape(text)}</a></p>')

    def render(self) -> str:
        title = html.escape(self.title)
        body = "\n".join(self.blocks)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
                f"<style>{STYLE}</style></head>\n<body><h1>{title}</h1>\n{body}\n</body></html>\n")

    def write(self, path: Path) -> Path:
        """Write the page next to a temporary copy first, so a reader never sees half a page."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(self.render(), encoding="utf-8")
        partial.replace(path)
        return path


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
