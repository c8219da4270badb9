"""Complexity report: per layer output shape, parameters, FLOPs, activation memory, receptive field and stride.

What `python -m pipeline summary` (pipeline/jobs/summary.py) prints, for any nn.Module.

- FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (its per-module counts by module name). It counts
  a multiply-add as 2 FLOPs and only counts convolutions and matrix products (not norms, activations, pooling
  or additions), so MACs = FLOPs / 2 are the multiply-adds papers usually quote as "FLOPs".
- Activation memory is the bytes of a layer's output tensor(s) at batch 1 in the model's dtype. The total
  counts every distinct tensor storage any module outputs once (an in-place ReLU or a view adds nothing).
- Receptive field and stride are measured by gradients on a linearised copy (see `pipeline.analysis.receptive_field`),
  so they are right for residual additions, branches and concatenations, not only chains.
"""
from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.analysis import receptive_field
from pipeline.analysis.receptive_field import ReceptiveField

FLOP_NOTE = ("FLOPs: torch.utils.flop_counter.FlopCounterMode; one multiply-add = 2 FLOPs (MACs = FLOPs / 2, the "
             "figure papers usually quote); only convolutions and matrix products are counted.")
MEMORY_NOTE = "Act. mem: bytes of the layer's output tensor(s) at batch 1."

# Default rows: the layers that shape a network's cost and geometry.
LAYER_TYPES = (
    nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.pooling._LPPoolNd,
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.RMSNorm,
)


@dataclass
class LayerRow:
    name: str                          # module path in the model ("" for the model itself)
    kind: str                          # module class name
    output_shapes: list[tuple[int, ...]]
    params: int
    flops: int                         # FlopCounterMode's count: a multiply-add is 2
    activation_bytes: int              # output tensor(s), batch 1, summed over calls
    calls: int = 1                     # a module reused in one forward (a shared ReLU) has several
    receptive_field: ReceptiveField | None = None


@dataclass
class Totals:
    params: int
    flops: int
    activation_bytes: int              # distinct output storages of all modules in the part, batch 1

    @property
    def macs(self) -> int:
        return self.flops // 2


@dataclass
class Summary:
    title: str
    input_shape: tuple[int, ...]       # (C, H, W), batch 1
    dtype: torch.dtype
    rows: list[LayerRow]
    total: Totals
    parts: dict[str, Totals] = field(default_factory=dict)  # "backbone", "heads.<task>", ... when asked
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Measuring


def _tensors(value: Any) -> list[Tensor]:
    """The tensors in a module output: a tensor, or nested lists/tuples/dicts/dataclasses of them."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [t for f in dataclasses.fields(value) for t in _tensors(getattr(value, f.name))]
    return []


def _nbytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _storage_key(tensor: Tensor) -> int:
    # The StorageImpl address: shared by views and in-place results, and defined on the meta device too.
    return tensor.untyped_storage()._cdata


def _count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _depth(name: str, modules: dict[str, nn.Module]) -> int:
    """Nesting depth of a module path, not counting ModuleList/ModuleDict levels (they are never called)."""
    if not name:
        return 0
    parts = name.split(".")
    return sum(not isinstance(modules[".".join(parts[:i])], (nn.ModuleList, nn.ModuleDict))
               for i in range(1, len(parts) + 1))


def _inside(name: str, part: str) -> bool:
    return part == "" or name == part or name.startswith(part + ".")


def _select_rows(called: list[str], modules: dict[str, nn.Module], depth: int | None) -> list[str]:
    if depth is None:
        return [name for name in called if isinstance(modules[name], LAYER_TYPES)]
    if depth == 0:
        return [""]
    ancestors = {".".join(parts[:i]) for parts in (name.split(".") for name in called if name) for i in range(len(parts))}
    return [name for name in called if name and (_depth(name, modules) == depth or
                                                 (_depth(name, modules) < depth and name not in ancestors))]


def measure_complexity(
    model: nn.Module,
    input_shape: tuple[int, ...] = (3, 224, 224),
    depth: int | None = None,
    parts: list[str] = (),
    receptive_fields: bool = True,
    title: str = "model",
) -> Summary:
    """Run one batch-1 forward of `model` (eval mode, no grad) and report it layer by layer.

    Rows: with `depth` None, every called conv/linear/pool/norm layer; with `depth` N, every called module
    N levels deep (ModuleList/ModuleDict levels not counted) and shallower leaves. `parts`: module paths
    (e.g. "backbone", "heads.cls") to total separately. Works on the meta device (no receptive fields there).
    """
    modules = dict(model.named_modules())
    names = {id(module): name for name, module in modules.items()}
    order: list[str] = []
    outputs: dict[str, list[Tensor]] = {}  # every call's output tensors, kept alive so storages stay distinct
    shapes: dict[str, list[tuple[int, ...]]] = {}  # the first call's output shapes, batch dimension dropped
    calls: dict[str, int] = {}

    def pre_hook(module, inputs):
        name = names[id(module)]
        if name not in calls:
            order.append(name)
            calls[name] = 0
        calls[name] += 1

    def post_hook(module, inputs, output):
        tensors = _tensors(output)
        shapes.setdefault(names[id(module)], [tuple(t.shape[1:]) for t in tensors])
        outputs.setdefault(names[id(module)], []).extend(tensors)

    handles = [h for module in modules.values()
               for h in (module.register_forward_pre_hook(pre_hook), module.register_forward_hook(post_hook))]
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.get_default_dtype()
    image = torch.rand(1, *input_shape, device=device, dtype=dtype)
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(image)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    # FlopCounterMode names modules "<RootClass>.<path>"; it counts a parent's children in the parent too.
    root_prefix = type(model).__name__
    flop_counts = {key: sum(ops.values()) for key, ops in counter.get_flop_counts().items()}

    def flops_of(name: str) -> int:
        return flop_counts.get(f"{root_prefix}.{name}" if name else root_prefix, 0)

    def part_totals(part: str) -> Totals:
        storages: dict[int, int] = {}
        for name, tensors in outputs.items():
            if _inside(name, part):
                for tensor in tensors:
                    key = _storage_key(tensor)
                    storages[key] = max(storages.get(key, 0), tensor.untyped_storage().nbytes())
        flops = counter.get_total_flops() if part == "" else flops_of(part)
        return Totals(_count_params(modules[part]), flops, sum(storages.values()))

    selected = _select_rows(order, modules, depth)
    rows = []
    for name in selected:
        tensors = outputs.get(name, [])
        unique = list({id(t): t for t in tensors}.values())
        rows.append(LayerRow(
            name=name or "(model)", kind=type(modules[name]).__name__,
            output_shapes=shapes.get(name, []),
            params=_count_params(modules[name]), flops=flops_of(name),
            activation_bytes=sum(_nbytes(t) for t in unique), calls=calls[name],
        ))

    notes = [FLOP_NOTE, MEMORY_NOTE]
    if receptive_fields and device.type != "meta" and len(input_shape) == 3:
        fields = receptive_field.measure(model, tuple(input_shape), selected)
        for name, row in zip(selected, rows):
            row.receptive_field = fields.get(name)
        notes.append(receptive_field.METHOD)
    else:
        notes.append("RF/stride: not measured.")
    return Summary(title=title, input_shape=tuple(input_shape), dtype=dtype, rows=rows, total=part_totals(""),
                   parts={part: part_totals(part) for part in parts}, notes=notes)


# ---------------------------------------------------------------------------------------------------------------
# Formatting


def human(value: float, unit: str = "", base: int = 1000) -> str:
    """1234567 -> '1.23M'; with base 1024 and unit 'B': '1.18 MiB'."""
    prefixes = ["", "K", "M", "G", "T", "P"]
    i = 0
    while abs(value) >= base and i < len(prefixes) - 1:
        value /= base
        i += 1
    if base == 1024:
        return f"{value:.0f} B" if i == 0 else f"{value:.2f} {prefixes[i]}i{unit}"
    return f"{value:.0f}{unit}" if i == 0 else f"{value:.2f}{prefixes[i]}{unit}"


def _shape_text(row: LayerRow) -> str:
    shapes = ["x".join(map(str, s)) if s else "scalar" for s in row.output_shapes]
    text = shapes[0] if len(shapes) == 1 else (", ".join(shapes) if len(shapes) <= 2 else
                                               f"{shapes[0]}, ... ({len(shapes)} tensors)")
    return text + (f" (x{row.calls} calls)" if row.calls > 1 else "")


def format_summary(summary: Summary) -> str:
    """A plain-text table: one line per row, then totals (and per-part totals)."""
    header = ["layer", "type", "output", "params", "FLOPs", "act. mem", "RF", "stride"]
    lines = [[row.name, row.kind, _shape_text(row), f"{row.params:,}", human(row.flops), human(row.activation_bytes, "B", 1024),
              row.receptive_field.size_text() if row.receptive_field else "-",
              row.receptive_field.stride_text() if row.receptive_field else "-"] for row in summary.rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    right = {3, 4, 5, 6, 7}

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    shape = "x".join(map(str, summary.input_shape))
    dtype = str(summary.dtype).removeprefix("torch.")
    notes = [textwrap.fill(note, width=110, initial_indent="  ", subsequent_indent="    ",
                           break_on_hyphens=False) for note in summary.notes]
    out = [f"{summary.title}: input 1x{shape} {dtype}", *notes, "",
           fmt(header), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines), ""]

    def total_line(label: str, t: Totals) -> str:
        return (f"{label}  params {t.params:>13,}  FLOPs {human(t.flops):>8} ({t.flops:,})  "
                f"MACs {human(t.macs):>8}  act. mem {human(t.activation_bytes, 'B', 1024):>10}")

    label_width = max([len("total")] + [len(p) for p in summary.parts])
    out += [total_line(part.ljust(label_width), t) for part, t in summary.parts.items()]
    out.append(total_line("total".ljust(label_width), summary.total))
    out.append(f"{'':{label_width}}  parameter memory {human(summary.total.params * torch.empty((), dtype=summary.dtype).element_size(), 'B', 1024)}")
    return "\n".join(out)
