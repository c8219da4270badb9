"""The model as exported models see it: one image tensor in, flat named tensors out ("<task>_<name>").

ONNX, TorchScript and the MLflow-logged model all run `NamedOutputsModel`; `raw_outputs` turns their named
results back into what each head's `decode` takes, so every runtime shares the heads' post-processing.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from pipeline.model import MultiTaskModel


class NamedOutputsModel(nn.Module):
    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """`image` float32 [B, C, H, W] in [0, 1] (the backbone normalises it) -> {"<task>_<name>": tensor}."""
        outputs = self.model(image)
        return {f"{task}_{name}": value for task, head in self.model.heads.items()
                for name, value in head.named_outputs(outputs[task]).items()}


def raw_outputs(heads: nn.ModuleDict, named: dict[str, Tensor], image_size: tuple[int, int]) -> dict[str, Any]:
    """Each head's eval outputs rebuilt from the named tensors of an exported model, for images of `image_size`."""
    rebuilt = {}
    for task, head in heads.items():
        # The longest task name that prefixes an output owns it ("det" and "det_small" can coexist).
        own = {name[len(task) + 1:]: value for name, value in named.items() if _owner(name, heads) == task}
        rebuilt[task] = head.from_named_outputs(own, image_size)
    return rebuilt


def _owner(name: str, heads: nn.ModuleDict) -> str | None:
    owners = [task for task in heads if name.startswith(f"{task}_")]
    return max(owners, key=len) if owners else None
