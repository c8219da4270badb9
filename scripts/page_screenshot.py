"""Screenshot an HTML page (a run report, an explain page) in headless Chromium for the docs: the whole page,
1280 px wide, reduced to a 256-colour PNG so it stays small in the repository.

    .venv/bin/python -m pipeline report runs/shapes_multitask/<run id> --out /tmp/report.html
    .venv/bin/python scripts/page_screenshot.py /tmp/report.html docs/report.png
    .venv/bin/python -m pipeline explain runs/shapes_multitask/<run id>/last.pt --out /tmp/explain
    .venv/bin/python scripts/page_screenshot.py /tmp/explain/index.html docs/explain.png

Uses the tests' browser helpers (tests/browser.py): Debian's chromium and chromium-driver (`make browser`)."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import MISSING, broken_images, find_chromium, full_page_screenshot, start_chromium  # noqa: E402

COLOURS = 256


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    paths = find_chromium()
    if paths is None:
        print(MISSING, file=sys.stderr)
        return 2
    driver = start_chromium(paths)
    try:
        driver.get(args.page.resolve().as_uri())
        broken = broken_images(driver)
        if broken:
            print(f"{args.page}: images that did not load: {broken}", file=sys.stderr)
            return 1
        with tempfile.TemporaryDirectory() as folder:
            shot = full_page_screenshot(driver, Path(folder) / "page.png")
            image = Image.open(shot).convert("RGB")
            image.quantize(colors=COLOURS, dither=Image.Dither.NONE).save(args.out, optimize=True)
    finally:
        driver.quit()
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
