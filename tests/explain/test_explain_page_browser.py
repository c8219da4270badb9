"""The explain page in a real browser: headless Chromium shows every image, and the page needs nothing from
another host."""
from __future__ import annotations

import pytest
from browser import broken_images, external_urls, full_page_screenshot, image_count

from pipeline.jobs.cli import main


@pytest.mark.browser
def test_the_explain_page_shows_every_image_in_chromium(tiny_run, tmp_path, browser):
    out = tmp_path / "explain"
    assert main(["explain", str(tiny_run.checkpoint), "--out", str(out), "--num-images", "2", "--channels", "2",
                 "--ascent-steps", "3", "--methods", "filters,activations,patches,cam,occlusion,neighbours",
                 "--tasks", "cls,seg"]) == 0
    page = out / "index.html"
    assert external_urls(page.read_text()) == []
    browser.get(page.as_uri())
    assert browser.title.startswith("Explain")
    pngs = list(out.rglob("*.png"))
    assert image_count(browser) == len(pngs) > 5
    assert broken_images(browser) == []
    assert full_page_screenshot(browser, tmp_path / "explain.png").stat().st_size > 10_000
