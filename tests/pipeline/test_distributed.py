"""Real torchrun processes on the CPU (gloo): 2 processes on one node, and 2 nodes of 1 process each with a
c10d rendezvous on 127.0.0.1, both end with the weights of one process training on the same global batch.

The model is norm-free (LeNet-5 and an MLP classifier, no dropout): BatchNorm statistics are per rank by
design, and PyTorch's SyncBatchNorm is GPU-only. The 2-node run also accumulates gradients over 2 micro-batches
(DDP's no_sync on the first), so its global batch is 2 per process x 2 processes x 2.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.engine.checkpoint import load_checkpoint
from pipeline.config.schema import load_config
from pipeline.model import build_model
from support import free_port

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
GLOBAL_BATCH = 8


def write_config(tmp_path: Path, name: str, batch_size: int, data: Path, accumulate: int = 1) -> Path:
    config = {
        "name": name, "seed": 3, "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(data / "train/annotations.json"), "val": str(data / "val/annotations.json"),
                 "image_size": 32, "batch_size": batch_size, "num_workers": 0,
                 "shapes": {"train_images": 32, "val_images": 8}},
        "model": {"backbone": {"name": "lenet5"},
                  "heads": {"cls": {"type": "classification", "dropout": 0.0, "hidden": [16]}}},
        "train": {"epochs": 2, "device": "cpu", "grad_clip": 1.0, "accumulate": accumulate,
                  "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
                  "scheduler": {"name": "cosine", "warmup_epochs": 0.5}},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "ddp"},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(command: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def wait(processes: list[subprocess.Popen], timeout: float = 300) -> None:
    for process in processes:
        output, _ = process.communicate(timeout=timeout)
        assert process.returncode == 0, output[-4000:]


def final_weights(tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    (checkpoint,) = (tmp_path / "runs" / name).glob("*/last.pt")
    return load_checkpoint(checkpoint)["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process with the whole global batch."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    data = tmp_path / "data"
    config = write_config(tmp_path, "single", GLOBAL_BATCH, data)
    wait([run([sys.executable, "-m", "pipeline", "train", str(config)])])
    weights = final_weights(tmp_path, "single")
    torch.manual_seed(3)
    initial = build_model(load_config(config).model, num_classes=3).state_dict()
    # Training moved the weights well beyond the tolerance the comparisons below allow.
    assert max(float((weights[k] - initial[k]).abs().max()) for k in initial) > 1e-2
    return tmp_path, data, weights


def assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_processes_train_the_same_weights_as_one_process_with_the_same_global_batch(reference):
    tmp_path, data, expected = reference
    config = write_config(tmp_path, "two_procs", GLOBAL_BATCH // 2, data)
    wait([run([TORCHRUN, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
               "-m", "pipeline", "train", str(config)])])
    assert_same_weights(final_weights(tmp_path, "two_procs"), expected)


def test_two_nodes_rendezvous_over_loopback_train_the_same_weights(reference):
    tmp_path, data, expected = reference
    config = write_config(tmp_path, "two_nodes", GLOBAL_BATCH // 4, data, accumulate=2)
    endpoint = f"127.0.0.1:{free_port()}"
    launchers = [run([TORCHRUN, "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
                      f"--rdzv-endpoint={endpoint}", "--rdzv-id=two-nodes-test", "-m", "pipeline", "train",
                      str(config)]) for _ in range(2)]
    wait(launchers)
    assert_same_weights(final_weights(tmp_path, "two_nodes"), expected)
