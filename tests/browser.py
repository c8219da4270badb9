"""Headless Chromium for the tests that open our HTML pages in a real browser (importable as `browser`: tests/ is
on pytest's pythonpath). Debian's `chromium` and `chromium-driver` packages (`make browser` installs them); a
test that needs them is skipped, with the command that installs them, where they are absent.

Nothing here fetches anything: selenium is pointed at the installed driver (no Selenium Manager download)."""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver",)
MISSING = "Chromium not installed: apt-get install chromium chromium-driver (make browser)"
WINDOW = (1280, 900)
MAX_SCREENSHOT_HEIGHT = 6000          # px: a page longer than this is cut, the screenshot stays a few MB at most
PAGE_LOAD_TIMEOUT = 60.0              # s


@dataclass(frozen=True)
class ChromiumPaths:
    browser: str
    driver: str


def find_chromium() -> ChromiumPaths | None:
    """The browser and its driver, when both are installed (the Debian paths first, then PATH)."""
    browser = next((p for p in CHROMIUM_CANDIDATES if Path(p).is_file()), None) or shutil.which("chromium")
    driver = next((p for p in DRIVER_CANDIDATES if Path(p).is_file()), None) or shutil.which("chromedriver")
    return ChromiumPaths(browser, driver) if browser and driver else None


def start_chromium(paths: ChromiumPaths, window: tuple[int, int] = WINDOW):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths.browser
    # --no-sandbox: tests may run as root (in a container), where Chromium's sandbox refuses to start.
    # --disable-dev-shm-usage: containers give /dev/shm 64 MB, too little for a long page's screenshot.
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={window[0]},{window[1]}", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(paths.driver), options=options)
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
    return driver


def chromium_driver():
    """A started headless Chromium (selenium WebDriver); pytest.skip when it is not installed."""
    paths = find_chromium()
    if paths is None:
        pytest.skip(MISSING)
    return start_chromium(paths)


# Every <img> after the lazy ones were brought into view: a broken one has no pixels (naturalWidth 0).
BROKEN_IMAGES_SCRIPT = """
const done = arguments[arguments.length - 1];
const images = Array.from(document.images);
images.filter(img => img.loading === 'lazy').forEach(img => img.scrollIntoView());
Promise.all(images.map(img => img.complete ? null : new Promise(ok => { img.onload = img.onerror = ok; })))
  .then(() => done(images.filter(img => !img.complete || img.naturalWidth === 0)
                         .map(img => (img.currentSrc || img.src || '').slice(0, 120) + ' alt=' + (img.alt || ''))));
"""


def broken_images(driver) -> list[str]:
    """The images of the open page that did not load (their src start and alt text); [] when all did."""
    driver.set_script_timeout(PAGE_LOAD_TIMEOUT)
    return list(driver.execute_async_script(BROKEN_IMAGES_SCRIPT))


def image_count(driver) -> int:
    return int(driver.execute_script("return document.images.length"))


ATTRIBUTE = re.compile(r"""\b(?:src|href|srcset|action|poster)\s*=\s*(["'])(.*?)\1""", re.IGNORECASE | re.DOTALL)
CSS_URL = re.compile(r"""url\(\s*(["']?)(.*?)\1\s*\)""", re.IGNORECASE)


def external_urls(html_text: str) -> list[str]:
    """Every src/href (and CSS url()) that is neither a data: URI, an in-page #anchor nor a relative path: what
    would make a page need the network (or another host) to open."""
    found = []
    for match in [*ATTRIBUTE.finditer(html_text), *CSS_URL.finditer(html_text)]:
        url = match.group(2).strip()
        parts = urlsplit(url)
        if url.startswith(("data:", "#")) or not url:
            continue
        if parts.scheme or parts.netloc or url.startswith("/"):
            found.append(url)
    return found


def full_page_screenshot(driver, path: Path, max_height: int = MAX_SCREENSHOT_HEIGHT) -> Path:
    """The whole page (up to `max_height` px tall) as a PNG: the window is made as tall as the document first."""
    height = int(driver.execute_script(
        "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"))
    size = driver.get_window_size()
    # The window's size includes what the browser draws around the page; the page gets innerHeight of it.
    frame = size["height"] - int(driver.execute_script("return window.innerHeight"))
    driver.set_window_size(size["width"], min(max(height, WINDOW[1]), max_height) + max(frame, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise OSError(f"{path}: Chromium could not save the screenshot")
    return path
