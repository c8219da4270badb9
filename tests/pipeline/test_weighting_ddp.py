"""Every weighting strategy under real torchrun DDP (2 CPU processes, gloo, 2 micro-batches per step):
both ranks end with identical parameters, task weights and BatchNorm statistics, and rank 0 checkpoints them; so
do distilled runs with feature adapters (outside the DDP wrapper) under the DDP reducer and under PCGrad."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from pipeline.engine.checkpoint import load_checkpoint
from pipeline.weighting import STRATEGIES
from support import free_port

REPO = Path(__file__).resolve().parents[2]
JOB = Path(__file__).with_name("ddp_weighting_job.py")


def test_every_strategy_keeps_both_ranks_identical_under_ddp(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    done = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(JOB), str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    distilled = ["distill/static", "distill/pcgrad"]     # the job's DISTILLED
    assert set(ranks[0]) == set(STRATEGIES) | set(distilled)
    for strategy in [*STRATEGIES, *distilled]:
        first, second = ranks[0][strategy], ranks[1][strategy]
        assert first["steps"] == 2, strategy
        assert first["weights"] == second["weights"], strategy
        for part in ("parameters", "adapters"):    # the adapters live outside the DDP wrapper
            unequal = [k for k in first[part] if not torch.equal(first[part][k], second[part][k])]
            assert not unequal, f"{strategy}: {unequal[:3]}"
        assert bool(first["adapters"]) == strategy.startswith("distill/"), strategy
        # Each rank normalised its own batches; validation and the checkpoint must see one set of statistics.
        saved = load_checkpoint(tmp_path / strategy.replace("/", "-") / "rank0" / "last.pt")
        for part, kept in (("statistics", saved["model"]), ("ema_statistics", saved["ema"])):
            assert first[part], f"{strategy}: no BatchNorm statistics found"
            for key, value in first[part].items():
                torch.testing.assert_close(value, second[part][key], rtol=0, atol=1e-7, msg=f"{strategy} {key}")
                assert torch.equal(value, kept[key]), f"{strategy} {part} {key}: rank 0 differs from its checkpoint"
    # The learned strategies did move their weights away from the static start (1, 1, 5).
    for strategy in ("uncertainty", "gradnorm"):
        assert ranks[0][strategy]["weights"] != {"cls": 1.0, "seg": 1.0, "recon": 5.0}, strategy
