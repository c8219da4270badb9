"""YAML as people write it: `1e-4`, `3e-4` and `1e5` are numbers.

PyYAML implements YAML 1.1, whose float pattern needs a dot (`1.0e-4`), so `lr: 3e-4` arrives as the
string '3e-4'. This loader is `yaml.SafeLoader` (no object construction) with YAML 1.2's float pattern
instead; everything else resolves as before.
"""
from __future__ import annotations

import re
from typing import IO, Any

import yaml

FLOAT_TAG = "tag:yaml.org,2002:float"
YAML_12_FLOAT = re.compile(r"""^(?:
     [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class NumberFriendlyLoader(yaml.SafeLoader):
    pass


# Copy the resolver table before editing it, so yaml.SafeLoader itself is left as it is.
NumberFriendlyLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
NumberFriendlyLoader.add_implicit_resolver(FLOAT_TAG, YAML_12_FLOAT, list("-+0123456789."))


def safe_load(stream: str | IO[str]) -> Any:
    return yaml.load(stream, Loader=NumberFriendlyLoader)  # noqa: S506 - a SafeLoader subclass
