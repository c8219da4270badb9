"""Turn plain YAML data into typed dataclasses, with errors a person can act on.

Every error names the file, the dotted key and what was expected; an
unknown key also names the nearest valid one, so typos are found at load
time instead of being silently ignored.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Union


class ConfigError(ValueError):
    pass


class DataCheckError(ValueError):
    """The data cannot train this model (pipeline/data_check/guard.py); the message lists every reason found.
    Here, beside ConfigError, so the CLI can name both user errors without importing the training stack."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_keys(data: dict, valid: list[str], where: str, source: str) -> None:
    for key in data:
        if key not in valid:
            near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"{source}: {where}{key}: unknown key.{hint} Valid keys here: {', '.join(valid)}")


def from_dict(cls: type, data: Any, where: str = "", source: str = "config") -> Any:
    """Build dataclass `cls` from `data` (a mapping), checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where.rstrip('.') or 'top level'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(data, list(fields), where, source)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = convert(hints[name], data[name], f"{where}{name}", source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: {where}{name}: required key is missing")
    return cls(**values)


def convert(tp: Any, value: Any, where: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, f"{where}.", source)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        if len(options) == 1:
            # X | None with a value: it can only be an X, and X's own error (the nested key, the nearest valid
            # key, the list item) is the useful one, not "expected X or NoneType".
            return convert(options[0], value, where, source)
        sections = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(sections) == 1:
            # A mapping can only be that section: its own error (unknown key, nearest valid key) is the useful one.
            return convert(sections[0], value, where, source)
        for option in args:
            try:
                return convert(option, value, where, source)
            except ConfigError:
                pass
        expected = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{source}: {where}: expected {expected}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{source}: {where}: expected null, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {where}: expected a list, got {value!r}")
        return [convert(args[0], v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{source}: {where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(convert(a, v, f"{where}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {where}: expected a mapping, got {value!r}")
        return {k: convert(args[1], v, f"{where}.{k}", source) for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{source}: {where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{source}: {where}: expected {tp.__name__}, got {value!r}")
    if isinstance(value, tp):
        return value
    raise ConfigError(f"{source}: {where}: expected {_type_name(tp)}, got {value!r}")
