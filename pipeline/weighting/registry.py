"""Strategies by name, and the `model.weighting` config block: `{name: <strategy>, ...its options}`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline.config.typed import ConfigError, from_dict
from pipeline.weighting.base import Weighting
from pipeline.weighting.dwa import DWA
from pipeline.weighting.gradnorm import GradNorm
from pipeline.weighting.pcgrad import PCGrad
from pipeline.weighting.static import Static
from pipeline.weighting.uncertainty import Uncertainty

STRATEGIES: dict[str, type[Weighting]] = {
    "static": Static, "uncertainty": Uncertainty, "dwa": DWA, "gradnorm": GradNorm, "pcgrad": PCGrad,
}


@dataclass
class WeightingConfig:
    name: str = "static"                # static | uncertainty | dwa | gradnorm | pcgrad
    options: Any = None                 # the strategy's own Options dataclass (None: its defaults)


def parse_weighting(raw: Any, source: str = "config") -> WeightingConfig:
    """Validate `model.weighting`: the name, then the other keys against that strategy's Options."""
    where = "model.weighting."
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: model.weighting: expected a mapping like {{name: uncertainty}}, got {raw!r}")
    name = raw.get("name", "static")
    if name not in STRATEGIES:
        raise ConfigError(f"{source}: {where}name: unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    options = from_dict(STRATEGIES[name].Options, {k: v for k, v in raw.items() if k != "name"}, where, source)
    return WeightingConfig(name=name, options=options)


def weighting_to_dict(config: WeightingConfig) -> dict:
    """The YAML block back: `parse_weighting(weighting_to_dict(c)) == c`."""
    options = config.options if config.options is not None else STRATEGIES[config.name].Options()
    return {"name": config.name, **dataclasses.asdict(options)}


def build_weighting(config: WeightingConfig, tasks: list[str], static_weights: dict[str, float]) -> Weighting:
    """The strategy for `tasks`; static_weights are the heads' `weight`s (each strategy's starting point)."""
    if config.name not in STRATEGIES:
        raise ConfigError(f"model.weighting.name: unknown strategy {config.name!r}; valid: {', '.join(STRATEGIES)}")
    return STRATEGIES[config.name](tasks, static_weights, config.options)
