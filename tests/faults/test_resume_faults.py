"""`train --resume` of a checkpoint that cannot continue under the config (other heads, head options, classes,
data order): a named error, exit 2, and the run it names is left exactly as it was: its folder's files, its
MLflow store and its FINISHED status."""
from __future__ import annotations

import hashlib

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.checkpoint import load_checkpoint
from pipeline.cli import main


def write_config(folder, **changes) -> str:
    config = {"name": "finished", "seed": 3, "output_dir": str(folder / "runs"),
              "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "resume-faults"},
              "data": {"train": str(folder / "data/train/annotations.json"),
                       "val": str(folder / "data/val/annotations.json"), "image_size": 32, "batch_size": 4,
                       "num_workers": 0, "shapes": {"train_images": 8, "val_images": 4}},
              "model": {"backbone": {"name": "lenet5"}, "heads": {"cls": {"type": "classification"}}},
              "train": {"epochs": 1, "device": "cpu"}}
    for key, value in changes.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def fingerprint(folder) -> dict[str, str]:
    """Every file under the runs folder and the MLflow store, by content."""
    files = [*sorted((folder / "runs").rglob("*")), folder / "mlflow.db"]
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in files if path.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume_faults")
    assert main(["train", write_config(folder)]) == 0
    (checkpoint,) = (folder / "runs" / "finished").glob("*/last.pt")
    return folder, checkpoint


@pytest.mark.parametrize("changes, named", [
    ({"model.heads": {"cls": {"type": "classification"}, "cls2": {"type": "classification"}}},
     "model.heads: checkpoint tasks ['cls'], config ['cls', 'cls2']"),
    ({"model.heads": {"cls": {"type": "classification", "dropout": 0.5}}},
     "model.heads.cls.dropout: checkpoint 0.2, config 0.5"),
    ({"data.batch_size": 2}, "data.batch_size: checkpoint 4, config 2"),
    ({"seed": 4}, "seed: checkpoint 3, config 4"),
])
def test_a_checkpoint_that_cannot_continue_is_refused_and_its_run_is_untouched(finished, capsys, changes, named):
    folder, checkpoint = finished
    before = fingerprint(folder)
    status = main(["train", write_config(folder, **changes), "--resume", str(checkpoint)])
    err = capsys.readouterr().err
    assert status == 2 and named in err and str(checkpoint) in err and "Traceback" not in err, err
    assert fingerprint(folder) == before
    run_id = load_checkpoint(checkpoint)["tracking_run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "FINISHED"
