"""`train --resume` of a checkpoint that cannot continue under the config (other heads, head options, classes,
data order): a named error, exit 2, and the run it names is left exactly as it was: its folder's files, its
MLflow store and its FINISHED status."""
from __future__ import annotations

import hashlib

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline.engine.checkpoint import load_checkpoint
from pipeline.jobs.cli import main
from pipeline.engine.trainer import Trainer


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


def test_resume_of_an_unreadable_last_checkpoint_continues_from_the_newest_readable_one(tmp_path, caplog):
    config = write_config(tmp_path, **{"train.checkpoint": {"keep_last": 2}})
    assert main(["train", config]) == 0
    (last,) = (tmp_path / "runs" / "finished").glob("*/last.pt")
    steps = load_checkpoint(last)["position"]["global_step"]
    last.write_bytes(last.read_bytes()[:300])          # cut short, as by a full disk
    caplog.set_level("WARNING")
    assert main(["train", write_config(tmp_path, **{"train.epochs": 2}), "--resume", str(last)]) == 0
    fallback = last.parent / f"step-{steps}.pt"
    assert f"{last}: not a file torch.save wrote, or truncated" in caplog.text and str(fallback) in caplog.text
    resumed = load_checkpoint(last)
    assert resumed["position"]["epoch"] == 2 and resumed["position"]["global_step"] == 2 * steps


def test_resume_with_no_readable_checkpoint_is_a_named_error_that_changes_nothing(finished, capsys, tmp_path):
    folder, checkpoint = finished
    damaged = tmp_path / "run" / "last.pt"
    damaged.parent.mkdir()
    damaged.write_bytes(checkpoint.read_bytes()[:300])
    (damaged.parent / "notes.txt").write_text("kept")
    before = fingerprint(folder)
    status = main(["train", write_config(folder), "--resume", str(damaged)])
    err = capsys.readouterr().err
    assert status == 2 and str(damaged) in err and f"no other readable checkpoint in {damaged.parent}" in err, err
    assert fingerprint(folder) == before
    assert sorted(p.name for p in damaged.parent.iterdir()) == ["last.pt", "notes.txt"]


def test_an_output_folder_that_cannot_be_written_fails_before_any_run_starts(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = write_config(tmp_path, output_dir=str(blocker / "runs"))
    status = main(["train", config])
    err = capsys.readouterr().err
    assert status == 2 and f"output_dir: cannot write the run's files under {blocker / 'runs' / 'finished'}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists()       # no MLflow run was opened


def test_a_resumed_run_is_running_while_it_trains_and_ends_with_its_own_status(tmp_path, monkeypatch):
    """The run log of a run that ended (FINISHED here) is replayed on resume; its old status must not be
    stamped on the reopened run."""
    assert main(["train", write_config(tmp_path)]) == 0
    (checkpoint,) = (tmp_path / "runs" / "finished").glob("*/last.pt")
    run_id = load_checkpoint(checkpoint)["tracking_run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    seen = []
    real_fit = Trainer.fit

    def fit_seeing_the_status(trainer):
        seen.append(client.get_run(run_id).info.status)
        return real_fit(trainer)

    monkeypatch.setattr(Trainer, "fit", fit_seeing_the_status)
    assert main(["train", write_config(tmp_path, **{"train.epochs": 2}), "--resume", str(checkpoint)]) == 0
    assert seen == ["RUNNING"]
    assert client.get_run(run_id).info.status == "FINISHED"
    losses = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, 5))    # 2 epochs of 2 steps, one value each


def test_a_checkpoint_of_older_code_with_other_optimizer_groups_is_a_named_error(tmp_path, capsys):
    """Older code had one optimiser group per stage (decay on everything) and no decay_norm_and_bias key."""
    assert main(["train", write_config(tmp_path, **{"train.optimizer": {"decay_norm_and_bias": True}})]) == 0
    (checkpoint,) = (tmp_path / "runs" / "finished").glob("*/last.pt")
    state = load_checkpoint(checkpoint)
    del state["config"]["train"]["optimizer"]["decay_norm_and_bias"]
    torch.save(state, checkpoint)
    before = fingerprint(tmp_path)
    status = main(["train", write_config(tmp_path), "--resume", str(checkpoint)])
    err = capsys.readouterr().err
    assert status == 2 and "optimizer parameter groups: checkpoint [('backbone.stages.0', 2)" in err and "Traceback" not in err, err
    assert "decay_norm_and_bias=true" in err
    assert fingerprint(tmp_path) == before
