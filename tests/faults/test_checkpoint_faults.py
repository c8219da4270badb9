"""Files that are not checkpoints: eval, train --resume and a pretrained state-dict file name the file and what
it is not, exit 2, never suggest weights_only=False (which would run the file's code), and write nothing."""
from __future__ import annotations

import random

import pytest
import torch
import yaml

from pipeline.jobs.cli import main


class NotATensor:
    pass


def write_bad(path, kind: str) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(64)}}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind.startswith("random bytes"):
        path.write_bytes(random.Random(kind).randbytes(2000))
    elif kind == "text":
        path.write_text("model: not a checkpoint\n")
    elif kind == "pickled object":
        torch.save({"model": NotATensor()}, path)
    elif kind == "plain tensor":
        torch.save(torch.zeros(3), path)


KINDS = {"empty": "empty", "truncated": "truncated",
         **{f"random bytes {seed}": "not a file torch.save wrote" for seed in range(12)},
         "text": "not a file torch.save wrote", "pickled object": "NotATensor",
         "plain tensor": "expected a training checkpoint"}


def assert_named(status: int, err: str, path, expected: str) -> None:
    assert status == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert str(path) in err and expected in err, err
    assert "weights_only=False" not in err and "Traceback" not in err


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_eval_names_the_file_and_what_it_is_not(tmp_path, capsys, kind):
    checkpoint = tmp_path / "last.pt"
    write_bad(checkpoint, kind)
    status = main(["eval", str(checkpoint), "--out", str(tmp_path / "eval")])
    assert_named(status, capsys.readouterr().err, checkpoint, KINDS[kind])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_eval_of_a_missing_checkpoint_names_it(tmp_path, capsys):
    status = main(["eval", str(tmp_path / "nothing.pt"), "--out", str(tmp_path / "eval")])
    assert_named(status, capsys.readouterr().err, tmp_path / "nothing.pt", "no such file")
    assert list(tmp_path.iterdir()) == []


def tiny_config(tmp_path, **backbone) -> str:
    config = {"name": "faults", "output_dir": str(tmp_path / "runs"),
              "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
              "data": {"format": "coco", "train": "missing/train.json", "val": "missing/val.json", "image_size": 32},
              "model": {"backbone": {"name": "lenet5", **backbone}, "heads": {"cls": {"type": "classification"}}},
              "train": {"epochs": 1}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("kind", ["truncated", "pickled object"])
def test_resume_from_a_bad_checkpoint_stops_before_any_run_starts(tmp_path, capsys, kind):
    checkpoint = tmp_path / "last.pt"
    write_bad(checkpoint, kind)
    status = main(["train", tiny_config(tmp_path), "--resume", str(checkpoint)])
    assert_named(status, capsys.readouterr().err, checkpoint, KINDS[kind])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "last.pt"]


def test_a_bad_pretrained_file_names_the_file(tmp_path):
    from backbones.registry import build
    from backbones.weights import WeightsFileError

    weights = tmp_path / "weights.pth"
    write_bad(weights, "truncated")
    with pytest.raises(WeightsFileError, match="truncated") as error:
        build("lenet5", pretrained=str(weights))
    assert str(weights) in str(error.value)
