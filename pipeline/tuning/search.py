"""What a tune worker searches: its command-line options and the plan made from them and the config."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.tuning.space import Dimension, Scalar, assignment


@dataclass
class TuneOptions:
    config: Path
    space: Path
    trials: int
    overrides: list[str] = field(default_factory=list)
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str | None = None          # None: in memory, this process only
    study_name: str | None = None       # None: <config name>-<random>
    metric: str | None = None           # None: the config's train.monitor
    direction: str | None = None        # max | min; None: the config's train.monitor_mode
    out: Path | None = None             # best.yaml; None: <output_dir>/<name>/tune-<study>/best.yaml
    overwrite: bool = False
    seed: int | None = None


@dataclass
class Search:
    """What every trial of this worker needs."""
    options: TuneOptions
    dimensions: list[Dimension]
    metric: str
    direction: str                      # maximize | minimize
    total: int                          # the study's trials, all workers together
    overrides: list[str]                # the command line's, and train.monitor when the config has none
    study_name: str

    def trial_overrides(self, sampled: dict[str, Scalar], number: int | None = None) -> list[str]:
        named = [assignment("tracking.run_name", f"{self.study_name} trial {number}")] if number is not None else []
        return [*self.overrides, *(assignment(key, value) for key, value in sampled.items()), *named]
