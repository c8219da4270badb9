"""Session fixtures shared across test folders: a tiny trained multi-task checkpoint (shapes set, every head
kind), used by the inference and explain tests."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.config.schema import parse_config
from pipeline.jobs.train import run_training


@dataclass
class TinyRun:
    folder: Path
    checkpoint: Path
    config: dict
    run_id: str


def tiny_config(folder: Path) -> dict:
    data = folder / "data"
    return {
        "name": "tiny", "seed": 0, "output_dir": str(folder / "runs"),
        "data": {"train": str(data / "train/annotations.json"), "val": str(data / "val/annotations.json"),
                 "image_size": 64, "batch_size": 8, "num_workers": 0,
                 "shapes": {"train_images": 32, "val_images": 8}},
        "model": {"backbone": {"name": "resnet18", "pretrained": False},
                  "heads": {"cls": {"type": "classification"}, "seg": {"type": "unet"},
                            "det": {"type": "yolo"}, "recon": {"type": "ae"}}},
        "train": {"epochs": 3, "device": "cpu"},
        "tracking": {"uri": f"sqlite:///{folder}/mlflow.db", "experiment": "inference"},
    }


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    folder = tmp_path_factory.mktemp("inference")
    config = tiny_config(folder)
    result, run_id = run_training(parse_config(config))
    return TinyRun(folder, Path(result.checkpoint), config, run_id)


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: opens a page in headless Chromium (skipped where it is not "
                                       "installed; `make browser` installs it); select with -m browser")


@pytest.fixture
def browser():
    """Headless Chromium (a selenium WebDriver, tests/browser.py), quit after the test; the test is skipped,
    with the command that installs it, where Chromium is not installed."""
    from browser import chromium_driver

    driver = chromium_driver()
    try:
        yield driver
    finally:
        driver.quit()
