"""`python -m pipeline prune`: the pruned checkpoint and its fine-tuned run are smaller, load where any
checkpoint loads (eval, export, resume), and the source run is left exactly as it was."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.config.schema import load_config
from pipeline.inference.export import export_model
from pipeline.inference.parity import check_parity
from pipeline.inference.trained import load_trained
from pipeline.jobs.cli import main
from pipeline.jobs.train import run_training


def files_of(folder):
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def pruned(tiny_run, tmp_path_factory):
    """Structured L1 pruning at 0.3 with one epoch of fine-tuning, its own run folder and store."""
    out = tmp_path_factory.mktemp("prune")
    source_files = files_of(tiny_run.checkpoint.parent)
    status = main(["prune", str(tiny_run.checkpoint), "--amount", "0.3", "--epochs", "1",
                   "--out", str(out / "pruned.pt"), f"output_dir={out / 'runs'}",
                   f"tracking.uri=sqlite:///{out}/mlflow.db"])
    assert status == 0
    assert files_of(tiny_run.checkpoint.parent) == source_files     # nothing of the source run changed
    return out, json.loads((out / "pruned.json").read_text())


def test_pruning_shrinks_the_model_and_fine_tuning_keeps_the_smaller_shapes(pruned):
    out, summary = pruned
    before, after, tuned = summary["rows"]
    assert after["params"] < 0.75 * before["params"] and after["macs"] < 0.75 * before["macs"]
    assert tuned["params"] == after["params"] and tuned["macs"] == after["macs"]
    assert after["weight_bytes"] < before["weight_bytes"]
    for row in (before, after, tuned):
        assert {"cls/accuracy", "seg/mIoU", "det/mAP50", "recon/ssim"} <= set(row["metrics"])
    checkpoint = next((out / "runs").rglob("last.pt"))
    state = torch.load(checkpoint, weights_only=True)
    assert state["config"]["model"]["init"] == str(out / "pruned.pt")
    assert sum(p.numel() for p in load_trained(checkpoint).model.parameters()) == tuned["params"]


def test_a_pruned_checkpoint_exports_to_onnx_with_the_metrics_of_pytorch(pruned, tmp_path):
    out, _ = pruned
    trained = load_trained(out / "pruned.pt")
    result = export_model(trained, tmp_path / "pruned.onnx")
    assert check_parity(trained, result, max_images=4).agrees


def test_the_fine_tuning_run_resumes_with_its_pruned_shapes(pruned):
    out, summary = pruned
    checkpoint = next((out / "runs").rglob("last.pt"))
    config = load_config(checkpoint.parent / "config.yaml", ["train.epochs=2"])
    result, _ = run_training(config, resume=str(checkpoint))
    assert result.position.epoch == 2
    assert sum(p.numel() for p in load_trained(result.checkpoint).model.parameters()) == summary["rows"][2]["params"]


def test_unstructured_pruning_without_fine_tuning_zeroes_weights_and_keeps_sizes(tiny_run, tmp_path):
    status = main(["prune", str(tiny_run.checkpoint), "--unstructured", "--amount", "0.5", "--epochs", "0",
                   "--out", str(tmp_path / "sparse.pt")])
    assert status == 0
    summary = json.loads((tmp_path / "sparse.json").read_text())
    before, after = summary["rows"]
    assert after["params"] == before["params"] and summary["sparsity"] == pytest.approx(0.5, abs=0.01)
    weights = load_trained(tmp_path / "sparse.pt").model.backbone.state_dict()
    convs = [w for name, w in weights.items() if name.endswith("weight") and w.dim() == 4 and w.shape[1] > 3]
    assert all(abs(float((w == 0).float().mean()) - 0.5) < 0.02 for w in convs)


@pytest.mark.parametrize("arguments, message", [
    (["--amount", "1.2"], "--amount must lie in"),
    (["--epochs", "-1"], "--epochs: expected 0 or more"),
    (["model.heads.cls.weight=oops"], "model.heads.cls.weight"),
])
def test_bad_arguments_stop_before_any_work(tiny_run, tmp_path, capsys, arguments, message):
    status = main(["prune", str(tiny_run.checkpoint), "--out", str(tmp_path / "p.pt"), *arguments])
    assert status == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_taylor_ranks_channels_by_the_training_loss_of_every_head(tiny_run, tmp_path):
    """The command's Taylor loss is the heads' own losses on training batches: it reaches every head (else
    pruning refuses), and it prunes other channels than L1 does."""
    chosen = {}
    for method in ("l1", "taylor"):
        status = main(["prune", str(tiny_run.checkpoint), "--method", method, "--epochs", "0",
                       "--out", str(tmp_path / f"{method}.pt")])
        assert status == 0
        chosen[method] = load_trained(tmp_path / f"{method}.pt").model.backbone.state_dict()
    assert chosen["l1"].keys() == chosen["taylor"].keys()
    assert any(chosen["l1"][key].shape == chosen["taylor"][key].shape
               and not torch.equal(chosen["l1"][key], chosen["taylor"][key]) for key in chosen["l1"])
