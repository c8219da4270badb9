from backbones.base import Backbone
from backbones.registry import build, names

__all__ = ["Backbone", "build", "names"]
