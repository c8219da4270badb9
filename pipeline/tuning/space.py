"""The search space of `tune`: a YAML file mapping config keys (as `key.path=value` overrides name them) to
the values to try, read and checked in full before any trial runs.

    train.optimizer.lr: {float: [1.0e-4, 1.0e-2], log: true}     # log-uniform
    train.optimizer.weight_decay: {float: [0, 0.1], step: 0.05}  # uniform; step: 0, 0.05, 0.1
    data.batch_size: {int: [16, 64], step: 16}                   # 16, 32, 48, 64
    train.optimizer.name: {choice: [adamw, sgd]}

Every key must be one the config has (a section left null in the config, such as model.qat, may be filled
in), and every bound and choice must make a valid config on its own, so a typo or an impossible value is
found here rather than as a failed trial. Trials apply the sampled values as overrides, so a trial's config is
validated like any other.
"""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from pipeline.config.schema import config_to_dict, load_config, parse_yaml
from pipeline.config.typed import ConfigError

KINDS = ("float", "int", "choice")
OPTIONS = {"float": ("log", "step"), "int": ("log", "step"), "choice": ()}
FORBIDDEN = ("tracking.",)      # every trial is a child run of the study's parent run, in its store and experiment
Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Dimension:
    """One searched config key: a float or int range, or a list of choices."""
    key: str
    kind: str                           # float | int | choice
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None     # None: continuous floats, every int
    log: bool = False
    choices: tuple[Scalar, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Scalar:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def grid(self, source: str) -> list[Scalar]:
        """The values the grid sampler tries: every choice, every int of the range, or a float range by step."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        if self.step is None:
            raise ConfigError(f"{source}: {self.key}: the grid sampler needs a finite list of values; give this "
                              f"float range a step (e.g. {{float: [{self.low}, {self.high}], step: "
                              f"{(self.high - self.low) / 4:g}}}) or list the values with choice: [...]")
        count = round((self.high - self.low) / self.step) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def bounds(self) -> list[Scalar]:
        """The values that must each make a valid config: the range's ends, or every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        """As written in the space file (plain data: a study records it and compares it between workers)."""
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        return {self.kind: [self.low, self.high], **({"log": True} if self.log else {}),
                **({"step": self.step} if self.step is not None else {})}


def assignment(key: str, value: Scalar) -> str:
    """The `key=value` override of a sampled value (JSON is YAML: strings stay strings, 1e-05 a number)."""
    return f"{key}={json.dumps(value)}"


def load_space(path: str | Path, config: str | Path, overrides: list[str] = ()) -> list[Dimension]:
    """The space file's dimensions, each checked against `config` with `overrides` applied."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--space: {path}: no such file")
    raw = parse_yaml(path.read_text(), str(path))
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: expected a mapping of config keys to ranges, e.g. "
                          "train.optimizer.lr: {float: [1.0e-4, 1.0e-2], log: true}")
    dimensions = [parse_dimension(str(key), spec, str(path)) for key, spec in raw.items()]
    check_against_config(dimensions, config, list(overrides), str(path))
    return dimensions


def parse_dimension(key: str, spec: Any, source: str) -> Dimension:
    where = f"{source}: {key}"
    if any(key.startswith(prefix) for prefix in FORBIDDEN):
        raise ConfigError(f"{where}: the tracking section cannot be searched (every trial is a child run of the "
                          "study's parent run, in the config's store and experiment)")
    kinds = [kind for kind in KINDS if isinstance(spec, dict) and kind in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: expected a mapping with one of {', '.join(KINDS)}, e.g. {{float: [0.0001, "
                          f"0.01], log: true}}, {{int: [16, 64], step: 16}} or {{choice: [adamw, sgd]}}; got {spec!r}")
    kind = kinds[0]
    unknown = sorted(set(spec) - {kind, *OPTIONS[kind]})
    if unknown:
        valid = ", ".join(OPTIONS[kind]) or "none"
        raise ConfigError(f"{where}: unknown option {unknown[0]!r} for {kind}; options of {kind}: {valid}")
    if kind == "choice":
        return parse_choice(key, spec["choice"], where)
    return parse_range(key, kind, spec, where)


def parse_choice(key: str, choices: Any, where: str) -> Dimension:
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: choice: expected a non-empty list of values, got {choices!r}")
    for choice in choices:
        if not (choice is None or isinstance(choice, (str, int, float, bool))):
            raise ConfigError(f"{where}: choice: {choice!r} is not a single value (a string, number, boolean or "
                              "null); Optuna's storages record only those")
    if len({json.dumps(choice) for choice in choices}) != len(choices):
        raise ConfigError(f"{where}: choice: a value is listed twice in {choices!r}")
    return Dimension(key, "choice", choices=tuple(choices))


def parse_range(key: str, kind: str, spec: dict, where: str) -> Dimension:
    number = int if kind == "int" else (int, float)
    bounds, log, step = spec[kind], spec.get("log", False), spec.get("step")
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(isinstance(b, number) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)):
        raise ConfigError(f"{where}: {kind}: expected [low, high], two {'integers' if kind == 'int' else 'numbers'}, "
                          f"got {bounds!r}")
    low, high = bounds
    if not low < high:
        raise ConfigError(f"{where}: {kind}: expected low < high, got [{low}, {high}] (one value: use choice)")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: a log-uniform range needs low > 0, got {low}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, number) or not step > 0:
            raise ConfigError(f"{where}: step: expected a positive {'integer' if kind == 'int' else 'number'}, "
                              f"got {step!r}")
        if log:
            raise ConfigError(f"{where}: step and log cannot be combined (Optuna samples a stepped range "
                              "uniformly); list the values with choice: [...] instead")
        if not math.isclose((high - low) / step, round((high - low) / step), abs_tol=1e-9):
            raise ConfigError(f"{where}: step: high - low ({high - low:g}) must be a multiple of step ({step:g})")
    if kind == "float":
        low, high = float(low), float(high)
        step = float(step) if step is not None else None
    return Dimension(key, kind, low, high, step, log)


def check_against_config(dimensions: list[Dimension], config: str | Path, overrides: list[str], source: str) -> None:
    """Each key names a key of the config, and each bound or choice makes a valid config."""
    known = config_to_dict(load_config(config, overrides))
    for dimension in dimensions:
        check_key(dimension.key, known, str(config), source)
        for value in dimension.bounds():
            try:
                load_config(config, overrides + [assignment(dimension.key, value)])
            except ConfigError as error:
                raise ConfigError(f"{source}: {dimension.key}: the value {value!r} does not make a valid config: "
                                  f"{error}") from None


def check_key(key: str, known: dict, config: str, source: str) -> None:
    """`key` walks the config's sections to a value; a section the config leaves null (model.qat) is not
    walked further: parsing the config with the value decides."""
    node: Any = known
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if node is None:
            return
        where = ".".join(parts[:depth]) or "the top level"
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: {key}: not a key of {config}: {where} is a value, not a section")
        if part not in node:
            near = difflib.get_close_matches(part, list(node), n=1, cutoff=0.5)
            hint = f" Did you mean {'.'.join([*parts[:depth], near[0]])!r}?" if near else ""
            raise ConfigError(f"{source}: {key}: not a key of {config}.{hint} Keys under {where}: "
                              f"{', '.join(map(str, node))}")
        node = node[part]
    if isinstance(node, dict):
        raise ConfigError(f"{source}: {key}: a section of {config}, not a value; search one of its keys: "
                          f"{', '.join(f'{key}.{k}' for k in node)}")


def grid_space(dimensions: list[Dimension], source: str) -> dict[str, list[Scalar]]:
    """The grid sampler's search space: every dimension's values."""
    return {dimension.key: dimension.grid(source) for dimension in dimensions}
