"""The run report: written and logged at the end of training, rebuilt by `python -m pipeline report RUN`, opened in
headless Chromium (every image loads, nothing from another host), and served by a real `mlflow server`'s UI."""
from __future__ import annotations

import logging
import re
import shutil
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from browser import broken_images, external_urls, full_page_screenshot, image_count
from pipeline.jobs import train
from pipeline.jobs.cli import main
from pipeline.inference.trained import load_trained
from pipeline.jobs.report import log_report
from pipeline.report import run_report
from pipeline.report.run_report import FILE_NAME, SECTIONS
from pipeline.tracking.run_log import FILE_NAME as RUN_LOG

CLASSES = ["circle", "square", "triangle"]        # the shapes set's
UI_TIMEOUT = 60.0                                 # s: MLflow's web app renders the artifact tree


def tracking_uri(tiny_run) -> str:
    return tiny_run.config["tracking"]["uri"]


def run_folder(tiny_run) -> Path:
    return tiny_run.checkpoint.parent


def test_training_writes_the_report_in_the_run_folder_and_logs_it(tiny_run, tmp_path):
    page = run_folder(tiny_run) / FILE_NAME
    assert page.is_file()
    client = MlflowClient(tracking_uri=tracking_uri(tiny_run))
    assert FILE_NAME in {artifact.path for artifact in client.list_artifacts(tiny_run.run_id)}
    logged = Path(client.download_artifacts(tiny_run.run_id, FILE_NAME, str(tmp_path)))
    assert logged.read_bytes() == page.read_bytes()


def test_the_page_is_self_contained_with_every_section_and_the_class_names(tiny_run):
    text = (run_folder(tiny_run) / FILE_NAME).read_text(encoding="utf-8")
    assert external_urls(text) == []
    assert f"<title>Run report: {tiny_run.run_id}</title>" in text
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in text, section
    sources = re.findall(r'<img src="([^"]*)"', text)
    assert len(sources) >= 10 and all(source.startswith("data:image/png;base64,") for source in sources)
    # Per-class tables: IoU with a background row (segmentation), AP (detection), precision/recall (cls).
    tables = text[text.index("<h2>Per-class results</h2>"):text.index("<h2>Sample predictions</h2>")]
    for header in ("<th>IoU</th>", "<th>AP</th>", "<th>precision</th>", "<td>background</td>"):
        assert header in tables
    assert all(tables.count(f"<td>{name}</td>") == 3 for name in CLASSES)
    assert "Fixed weights: cls 1, det 1, recon 1, seg 1." in text          # static weighting
    assert "model: input 1x3x64x64 float32" in text and "heads.det" in text   # the complexity summary
    assert f"python -m pipeline explain {tiny_run.checkpoint}" in text      # no explain outputs yet


def test_report_command_writes_beside_a_run_folder_and_logs_with_log(tiny_run, tmp_path, capsys):
    folder = tmp_path / "run"             # a run folder of its own, so the training's page stays as it was
    folder.mkdir()
    (folder / "last.pt").symlink_to(tiny_run.checkpoint)
    shutil.copy(run_folder(tiny_run) / RUN_LOG, folder / RUN_LOG)
    (folder / "explain").mkdir()
    (folder / "explain" / "index.html").write_text("<html></html>")
    assert main(["report", str(folder), "--log"]) == 0
    page = folder / FILE_NAME
    assert f"wrote {page} and logged it" in capsys.readouterr().out
    text = page.read_text(encoding="utf-8")
    assert '<a href="explain/index.html">' in text       # relative: it works beside the page and in MLflow
    assert f"Curves from {folder / RUN_LOG}." in text and "<h2>Losses</h2>" in text
    client = MlflowClient(tracking_uri=tracking_uri(tiny_run))
    logged = Path(client.download_artifacts(tiny_run.run_id, FILE_NAME, str(tmp_path / "logged")))
    assert logged.read_text(encoding="utf-8") == text


def test_report_command_reads_an_mlflow_run_and_logs_the_page_to_it(tiny_run, tmp_path, capsys):
    out = tmp_path / "mlflow_run.html"
    assert main(["report", f"runs:/{tiny_run.run_id}", "--tracking-uri", tracking_uri(tiny_run),
                 "--out", str(out)]) == 0
    assert "logged it as the run's report.html" in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    assert "Curves from the metric history of MLflow store" in text
    assert "No training losses were logged" not in text and "No validation metrics" not in text
    assert "status</th><td>FINISHED" in text
    client = MlflowClient(tracking_uri=tracking_uri(tiny_run))
    logged = Path(client.download_artifacts(tiny_run.run_id, FILE_NAME, str(tmp_path / "logged")))
    assert logged.read_text(encoding="utf-8") == text


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such folder or file; expected a run folder"),
    ("empty", "no best.pt or last.pt here; expected a run folder"),
    ("unknown run", "no such run on the MLflow store"),
])
def test_a_run_that_is_not_there_is_a_named_error(tiny_run, tmp_path, capsys, case, expected):
    (tmp_path / "empty").mkdir()
    argv = {"missing": [str(tmp_path / "missing")], "empty": [str(tmp_path / "empty")],
            "unknown run": ["runs:/0123456789abcdef", "--tracking-uri", tracking_uri(tiny_run)]}[case]
    assert main(["report", *argv]) == 2
    error = capsys.readouterr().err
    assert expected in error and (case == "unknown run" or argv[0] in error)


def test_a_report_that_cannot_be_built_leaves_the_finished_training_alone(monkeypatch, tmp_path, caplog):
    def broken(*args, **kwargs):
        raise ValueError("no figure today")

    logged = []
    monkeypatch.setattr(train, "write_report", broken)
    tracker = SimpleNamespace(run_id="abc", log_artifact=logged.append)
    trainer = SimpleNamespace(config=None, data_info=SimpleNamespace(class_names=CLASSES))
    result = SimpleNamespace(evaluation=None, best_checkpoint=None, checkpoint=tmp_path / "last.pt",
                             stopped_early=False)
    with caplog.at_level(logging.WARNING, logger=train.__name__):
        train.record_report(tracker, trainer, result, tmp_path, model=None, val_batch=None, logged=[])
    assert logged == []
    assert "could not write the run report (ValueError: no figure today)" in caplog.text
    assert f"python -m pipeline report {tmp_path}" in caplog.text


def test_complexity_measured_on_a_meta_copy_equals_the_trained_model_s(tiny_run, monkeypatch):
    trained = load_trained(tiny_run.checkpoint)
    on_meta = run_report.complexity_text(trained.config, trained.model, len(trained.class_names))

    def no_meta(*args, **kwargs):
        raise NotImplementedError("no meta kernel")

    monkeypatch.setattr(run_report, "build_model", no_meta)       # the fallback: the trained model itself
    assert run_report.complexity_text(trained.config, trained.model, len(trained.class_names)) == on_meta


@pytest.mark.browser
def test_the_report_opens_in_chromium_with_every_image_loaded(tiny_run, browser, tmp_path):
    page = run_folder(tiny_run) / FILE_NAME
    browser.get(page.as_uri())
    assert browser.title == f"Run report: {tiny_run.run_id}"
    assert image_count(browser) >= 10
    assert broken_images(browser) == []
    shot = full_page_screenshot(browser, tmp_path / "report.png")
    assert shot.stat().st_size > 10_000


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    from mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("report_server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.browser
def test_mlflow_ui_lists_and_serves_the_logged_report(tiny_run, browser, mlflow_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.create_experiment("report-ui")
    run_id = client.create_run(experiment).info.run_id
    page = run_folder(tiny_run) / FILE_NAME
    assert log_report(page, run_id, mlflow_server.uri) is None
    browser.get(f"{mlflow_server.uri}/#/experiments/{experiment}/runs/{run_id}/artifacts")
    wait = WebDriverWait(browser, UI_TIMEOUT)
    try:
        # Listed in the artifact tree; a click previews it in the UI's frame, where it renders, images and all.
        wait.until(lambda driver: driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{FILE_NAME}']"))[0].click()
        browser.switch_to.frame(wait.until(lambda driver: driver.find_elements(By.TAG_NAME, "iframe"))[0])
        heading = wait.until(lambda driver: driver.find_elements(By.TAG_NAME, "h1"))[0]
        assert heading.text == f"Run report: {tiny_run.run_id}"
        assert broken_images(browser) == [] and image_count(browser) >= 10
    finally:
        browser.switch_to.default_content()
        full_page_screenshot(browser, tmp_path / "mlflow_ui.png")
    with urllib.request.urlopen(f"{mlflow_server.uri}/get-artifact?path={FILE_NAME}&run_uuid={run_id}",
                                timeout=30) as response:
        served = response.read().decode("utf-8")
    assert served == page.read_text(encoding="utf-8")
