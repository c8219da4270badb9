"""Exact resume: a run killed with SIGKILL mid-epoch and resumed with `--resume auto` ends with the same bits
as a run that was never interrupted (deterministic mode, CPU), in the same MLflow run, with one value per step
although the steps between the last checkpoint and the kill were trained (and logged) twice."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 6   # 24 images, batch 2, 2 micro-batches per step
EVERY_STEPS = 3       # checkpoints at steps 3, 6, 9, 12: a kill at step 10 or 11 loses logged steps


def write_config(tmp_path: Path, name: str, data: Path, epochs: int = 2) -> Path:
    config = {
        "name": name, "seed": 7, "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(data / "train/annotations.json"), "val": str(data / "val/annotations.json"),
                 "image_size": 32, "batch_size": 2, "num_workers": 0,
                 "shapes": {"train_images": 24, "val_images": 4}},
        "model": {"backbone": {"name": "mobilenet_v3_small"},
                  "heads": {"cls": {"type": "classification", "dropout": 0.3},      # dropout draws from torch's RNG
                            "seg": {"type": "unet", "decoder_channels": [16, 16, 8, 8, 8]},
                            "recon": {"type": "dae", "decoder_channels": [16, 8, 8, 8, 8]}}},  # so does the noise
        "train": {"epochs": epochs, "device": "cpu", "deterministic": True, "accumulate": 2, "ema_decay": 0.9,
                  "monitor": "val/seg/mIoU", "checkpoint": {"every_steps": EVERY_STEPS},
                  "optimizer": {"name": "adamw", "lr": 0.003}},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "resume"},
    }
    path = tmp_path / f"{name}-{epochs}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "train", str(config), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-4000:]
    return output


def checkpoint_of(tmp_path: Path, name: str) -> Path:
    (path,) = (tmp_path / "runs" / name).glob("*/last.pt")
    return path


def logged_steps(run_folder: Path) -> list[int]:
    """The steps with a train/loss value in the run's metrics.jsonl, as often as they appear."""
    log = run_folder / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    events = [json.loads(line) for line in lines[:-1]]   # the last line may be cut short by the writer
    return [e["step"] for e in events if e.get("event") == "metrics" and "train/loss" in e["values"]]


def kill_after_the_checkpoint(process: subprocess.Popen, runs: Path, epoch: int) -> tuple[dict, list[int]]:
    """SIGKILL the run once it has logged steps past a mid-`epoch` checkpoint (steps a resume trains again)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        for path in runs.glob("*/last.pt"):
            try:
                position = load_checkpoint(path)["position"]
            except (EOFError, RuntimeError, FileNotFoundError, ValueError):
                continue
            logged = logged_steps(path.parent)
            if (position["epoch"] == epoch and position["step_in_epoch"] > 0 and logged
                    and max(logged) > position["global_step"]):
                process.send_signal(signal.SIGKILL)
                process.communicate()
                return position, logged_steps(path.parent)
        time.sleep(0.02)
    pytest.fail(f"the run ended or stalled before logging a step past a checkpoint in epoch {epoch}: "
                f"{process.communicate()[0][-3000:]}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("resume")
    data = tmp_path / "data"
    finish(train(write_config(tmp_path, "straight", data)))
    return tmp_path, data, load_checkpoint(checkpoint_of(tmp_path, "straight"))


def test_sigkill_mid_epoch_then_resume_auto_ends_bitwise_equal_in_the_same_mlflow_run(uninterrupted):
    tmp_path, data, expected = uninterrupted
    config = write_config(tmp_path, "killed", data)
    process = train(config)
    killed_at, logged_before_kill = kill_after_the_checkpoint(process, tmp_path / "runs/killed", epoch=1)
    assert process.returncode == -signal.SIGKILL
    resumed_from = load_checkpoint(checkpoint_of(tmp_path, "killed"))["position"]
    assert resumed_from["epoch"] == 1 and 0 < resumed_from["step_in_epoch"] < STEPS_PER_EPOCH, (killed_at, resumed_from)
    assert max(logged_before_kill) > resumed_from["global_step"], (logged_before_kill, resumed_from)

    output = finish(train(config, "--resume", "auto"))
    assert "resumed at epoch 2" in output
    actual = load_checkpoint(checkpoint_of(tmp_path, "killed"))
    assert actual["position"]["global_step"] == expected["position"]["global_step"] == 2 * STEPS_PER_EPOCH
    for part in ("model", "ema"):
        assert actual[part].keys() == expected[part].keys()
        unequal = [k for k in expected[part] if not torch.equal(actual[part][k], expected[part][k])]
        assert not unequal, f"{part}: {unequal[:5]}"
    assert actual["metrics"] == expected["metrics"]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(actual["tracking_run_id"])
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))   # one run, every step logged once across the kill
    assert sorted(logged_steps(checkpoint_of(tmp_path, "killed").parent)) == steps


def test_resume_can_extend_the_epoch_count(uninterrupted):
    tmp_path, _, finished = uninterrupted
    config = write_config(tmp_path, "straight", tmp_path / "data", epochs=3)
    finish(train(config, "--resume", str(checkpoint_of(tmp_path, "straight"))))
    extended = load_checkpoint(checkpoint_of(tmp_path, "straight"))
    assert extended["position"]["epoch"] == 3
    assert extended["position"]["global_step"] == 3 * STEPS_PER_EPOCH
    assert extended["tracking_run_id"] == finished["tracking_run_id"]
    assert len(extended["history"]) == 3
