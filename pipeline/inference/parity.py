"""Does the exported file predict what the checkpoint predicts? Checked on the checkpoint's own validation images.

Both sides go through the validation code training used (`pipeline.engine.validation.evaluate`): PyTorch with
the model itself, the export through its runner. Reported: the largest absolute difference per output name,
and the validation metrics of each side; they agree when every metric is equal to 3 decimals (an int8 export
cannot: `metric_drops` says how much worse each of its metrics is). When the val split is not where the config
says (the run's data moved), only the outputs on the export's example images are compared, and the report says
so.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from pipeline.config.typed import ConfigError, DataCheckError
from pipeline.engine.data import eval_loader
from pipeline.engine.validation import evaluate
from pipeline.inference.export import ExportResult
from pipeline.inference.named_outputs import NamedOutputsModel, raw_outputs
from pipeline.inference.onnx_runner import open_runner
from pipeline.inference.trained import TrainedModel
from pipeline.inference.val_data import evaluation_dataset

log = logging.getLogger(__name__)

MAX_IMAGES = 64
DECIMALS = 3
EXAMPLE_TOLERANCE = 1e-3   # without metrics (no val data), the outputs themselves must agree to this
LOWER_IS_BETTER = ("mse", "loss")   # metric names (last part) where a higher value is a worse model


@dataclass
class ParityReport:
    max_abs_diff: dict[str, float]        # output name -> largest |export - PyTorch| over the images
    metrics_torch: dict[str, float]       # "task/metric" -> value; empty when checked on example images only
    metrics_export: dict[str, float]
    agrees: bool                          # every metric equal to DECIMALS decimals (example images: every
                                          # output within EXAMPLE_TOLERANCE)
    images: int                           # how many images were compared
    data: str                             # what they were: the val split, or why only example images
    differing: list[str] = field(default_factory=list)   # metrics that differ at DECIMALS decimals

    def to_dict(self) -> dict[str, Any]:
        """For the sidecar (JSON has no NaN)."""
        plain = dataclasses.asdict(self)
        for key in ("metrics_torch", "metrics_export"):
            plain[key] = {name: value if math.isfinite(value) else None for name, value in plain[key].items()}
        return plain


def check_parity(trained: TrainedModel, exported: ExportResult, max_images: int = MAX_IMAGES,
                 example: Tensor | None = None) -> ParityReport:
    """Run `exported` (in onnxruntime or torch.jit) and the PyTorch model on up to `max_images` validation
    images of the checkpoint; `example` (images in [0, 1]) is what is compared when the val split is gone."""
    runner = open_runner(exported.model_path, trained.model.heads, exported.format)
    torch_named = NamedOutputsModel(trained.model).eval()
    loader, data = _val_loader(trained, max_images)
    if loader is None:
        return _on_examples(trained, runner, torch_named, example, data)
    log.info("parity: evaluating PyTorch and the export on %s", data)
    compared = _Compared(trained.model.heads, runner.named, torch_named)
    device, ids = torch.device("cpu"), list(trained.category_ids)
    metrics_torch = evaluate(trained.model, loader, device, ids).metrics
    metrics_export = evaluate(compared, loader, device, ids).metrics
    differing = [name for name in sorted(set(metrics_torch) | set(metrics_export))
                 if not _same(metrics_torch.get(name), metrics_export.get(name))]
    return ParityReport(compared.max_abs_diff, metrics_torch, metrics_export, agrees=not differing,
                        images=compared.images, data=data, differing=differing)


class _Compared:
    """The export as a runner for `evaluate`, also running PyTorch on each batch to keep the largest
    difference per output (nothing is stored, so the check's memory does not grow with the images)."""

    def __init__(self, heads: nn.ModuleDict, named: Callable[[Tensor], dict[str, Tensor]],
                 reference: NamedOutputsModel) -> None:
        self.heads, self.named, self.reference = heads, named, reference
        self.max_abs_diff: dict[str, float] = {}
        self.images = 0

    def eval(self) -> "_Compared":
        return self

    def __call__(self, image: Tensor) -> dict[str, Any]:
        got = self.named(image)
        with torch.no_grad():
            expected = self.reference(image)
        _fold_differences(self.max_abs_diff, got, expected)
        self.images += len(image)
        return raw_outputs(self.heads, got, (image.shape[-2], image.shape[-1]))


def _fold_differences(into: dict[str, float], got: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    for name, value in expected.items():
        if got[name].shape != value.shape:
            diff = math.inf
        else:
            diff = (got[name].float() - value.float()).abs().max().item() if value.numel() else 0.0
        into[name] = max(into.get(name, 0.0), diff)


def _on_examples(trained: TrainedModel, runner, torch_named: NamedOutputsModel, example: Tensor | None,
                 reason: str) -> ParityReport:
    what = "example images"
    if example is None:  # the export's own default example: random images at the trained size
        size, channels = trained.config.data.image_size, trained.model.backbone.in_channels
        example = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
        what = f"example images (random, {size} px)"
    differences: dict[str, float] = {}
    with torch.no_grad():
        _fold_differences(differences, runner.named(example), torch_named(example))
    log.warning("parity checked on %d %s only: %s", len(example), what, reason)
    agrees = all(value <= EXAMPLE_TOLERANCE for value in differences.values())
    return ParityReport(differences, {}, {}, agrees, images=len(example),
                        data=f"{len(example)} {what} only, no metrics: {reason}")


def _val_loader(trained: TrainedModel, max_images: int) -> tuple[DataLoader | None, str]:
    """The first `max_images` images of the checkpoint's val split, read as `eval` reads them; or None and why
    not (the run's data moved, or cannot be read any more)."""
    try:
        dataset, where = evaluation_dataset(trained)
    except FileNotFoundError as error:
        return None, f"the val split is not there (moved?): {error}"
    except (ConfigError, DataCheckError) as error:
        return None, f"the val split cannot be used ({error})"
    # A few dozen images: workers cost more than they save.
    data = dataclasses.replace(trained.config.data, num_workers=0)
    subset = Subset(dataset, range(min(max_images, len(dataset))))
    return eval_loader(subset, data, trained.config.seed), f"{len(subset)} images of the val split {where}"


def task_metrics(report: ParityReport) -> list[str]:
    """The "task/metric" names of either side (per-class entries, "task/metric/class", left out)."""
    return [name for name in sorted(set(report.metrics_torch) | set(report.metrics_export)) if name.count("/") == 1]


def metric_drops(report: ParityReport) -> dict[str, float]:
    """Per task metric, how much worse the export scores than PyTorch (negative: better), for an export that
    cannot agree exactly (int8), on the metric's own scale: in absolute terms for metrics of magnitude up to 1
    (accuracy, IoU, mAP, SSIM: 0.05 is 5 points), relative to PyTorch's value beyond (PSNR in dB: 0.05 is 5% of
    it), so a drop of a metric near 0 is not blown up by dividing by it. Equal values (NaN on both sides: no
    such targets in these images) drop 0; a metric only one side has drops inf, worse than any bound."""
    return {name: _drop(name, report.metrics_torch.get(name), report.metrics_export.get(name))
            for name in task_metrics(report)}


def _drop(name: str, reference: float | None, value: float | None) -> float:
    if reference is None or value is None or math.isnan(reference) != math.isnan(value):
        return math.inf
    if math.isnan(reference):
        return 0.0
    drop = value - reference if name.rsplit("/", 1)[1] in LOWER_IS_BETTER else reference - value
    return drop / max(abs(reference), 1.0)


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return False
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return round(a, DECIMALS) == round(b, DECIMALS)
