"""Pruning a MultiTaskModel in place: structured channel pruning (torch-pruning's dependency graph keeps skip
connections, U-Net concatenations and depthwise groups consistent) or unstructured magnitude pruning
(`torch.nn.utils.prune`, for comparison: the zeros are baked in, the parameter count stays).

Which layers keep their output channels ("output layers"): every Conv/Linear whose output reaches one of a
head's named outputs (`head.named_outputs`) without passing through another Conv/Linear. Found by one forward
pass with hooks and a walk back through the autograd graph from each output, so it holds for any head type:
it catches the class logits, YOLO's per-anchor predictors (through view/permute), the reconstruction's last
conv (through its sigmoid), the VAE's latent projection (through chunk), and layers added onto those (FCN's
score/upsampling sum), whose channels are tied to the output by the addition. The backbone's first conv keeps
its input channels because torch-pruning never prunes the network's input.

A pruned model's `architecture` (every checkpoint the trainer writes holds it) records the new shapes, so
`resize_to` can resize a freshly built, unpruned model of the same config before loading the weights; it holds
only ints and strings, so `torch.load(..., weights_only=True)` reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

import gc

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune
from torch.utils.flop_counter import FlopCounterMode

from pipeline.compression.architecture import architecture, resize_to

if TYPE_CHECKING:   # pipeline.model imports this package: no import at run time
    import torch_pruning as tp   # imported where used: it takes seconds, and every command loads this module

    from pipeline.model import MultiTaskModel

PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class PruneOptions:
    amount: float = 0.3                      # fraction of channels (structured) or weights (unstructured)
    method: Literal["l1", "taylor"] = "l1"   # structured importance; unstructured is always L1 magnitude
    structured: bool = True
    round_to: int | None = None              # keep channel counts multiples of this (hardware friendly)


@dataclass
class PruneReport:
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    sparsity: float                          # fraction of zero weights over the pruned layers (unstructured)
    pruned_layers: int                       # layers whose weights changed shape (structured) or were masked
    ignored_layers: list[str] = field(default_factory=list)


def prune_model(model: MultiTaskModel, example: Tensor, options: PruneOptions,
                loss_fn: Callable[[MultiTaskModel], Tensor] | None = None) -> PruneReport:
    """Prune `model` in place as `options` say and report sizes before and after. `example`: an image batch
    [B,C,H,W] for tracing. `loss_fn` (taylor only) gives the loss whose gradients rank channels; by default the
    sum of the named outputs' means on `example`."""
    check_options(options)
    if options.structured:   # unstructured pruning keeps every shape: nothing to refuse
        check_prunable(model)
    was_training = model.training
    model.eval()   # tracing in eval: no denoising second backbone pass, BN statistics untouched
    try:
        if options.structured:
            check_traced(model, example)
        macs_before, params_before = count(model, example)
        ignored = output_layers(model, example)
        if options.structured:
            pruned, sparsity = prune_structured(model, example, options, ignored, loss_fn), 0.0
        else:
            pruned, sparsity = prune_unstructured(model, options.amount, ignored)
        macs_after, params_after = count(model, example)
    finally:
        model.train(was_training)
    return PruneReport(params_before, params_after, macs_before, macs_after, sparsity, pruned, sorted(ignored))


def check_options(options: PruneOptions) -> None:
    """Reject options that would prune nothing or everything, naming the field."""
    if not 0 < options.amount < 1:
        raise ValueError(f"amount must lie in (0, 1), got {options.amount}")
    if options.method not in ("l1", "taylor"):
        raise ValueError(f"method must be 'l1' or 'taylor', got {options.method!r}")
    if options.round_to is not None and options.round_to < 1:
        raise ValueError(f"round_to must be a positive int or None, got {options.round_to}")


def check_prunable(model: MultiTaskModel) -> None:
    """SegNet unpools with the backbone's max-pool indices: decoder channel k is put back where encoder pool
    channel k had its maxima, and the head finds its record by channel count. That pairing lives in the indices
    (not in the autograd graph of the features), so torch-pruning prunes the two sides independently: the
    pruned model still runs, but decoder channels get another channel's positions, or (counts differing) fall
    back silently to bilinear upsampling. Refuse rather than change the function unannounced."""
    for task, head in model.heads.items():
        if head.needs_pool_indices:
            raise ValueError(f"head {task!r} ({type(head).__name__}) unpools with the backbone's max-pool "
                             "indices, whose channel pairing torch-pruning's dependency graph cannot "
                             "track (pruning would silently re-pair or drop the unpooling); prune a model "
                             "without it")


def check_traced(model: MultiTaskModel, example: Tensor) -> None:
    """The dependency graph is traced in eval mode, so layers that run only in training (auxiliary
    classifiers: PSPNet's aux_weight, classification's aux_stages) are not in it: their inputs would lose
    channels they still expect. Refuse, naming them."""
    called: set[str] = set()
    hooks = [module.register_forward_hook(lambda *_, name=name: called.add(name))
             for name, module in model.named_modules() if isinstance(module, PRUNABLE)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    unused = sorted(name for name, module in model.named_modules()
                    if isinstance(module, PRUNABLE) and name not in called)
    if unused:
        raise ValueError(f"layers {unused[:4]}{' ...' if len(unused) > 4 else ''} run only in training (auxiliary "
                         "branches), outside the graph structured pruning traces; prune a model without them "
                         "(e.g. aux_weight: 0, aux_stages: [])")


def count(model: nn.Module, example: Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass on `example`, counted as `summary` counts them
    (FlopCounterMode: convolutions and matrix products; MACs = FLOPs / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


def named_outputs(model: MultiTaskModel, outputs: dict[str, Any]) -> dict[str, Tensor]:
    """Every head's outputs as flat tensors, "<task>.<name>": what tracing and contracts are about."""
    return {f"{task}.{name}": tensor for task, head in model.heads.items()
            for name, tensor in head.named_outputs(outputs[task]).items()}


def output_layers(model: MultiTaskModel, example: Tensor) -> set[str]:
    """Names of the Conv/Linear modules whose output reaches a head output with no Conv/Linear in between
    (the rule in the module docstring)."""
    produced: dict[Any, str] = {}   # autograd node of a module's output -> module name
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: remember(produced, out, name))
             for name, module in model.named_modules() if isinstance(module, PRUNABLE)]
    try:
        with torch.enable_grad():
            outputs = named_outputs(model, model(example))
    finally:
        for hook in hooks:
            hook.remove()
    found: set[str] = set()
    seen: set[Any] = set()
    stack = [t.grad_fn for t in outputs.values() if t.grad_fn is not None]
    while stack:   # walk back from each output; stop at the first Conv/Linear on every path
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in produced:
            found.add(produced[node])
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def remember(produced: dict[Any, str], out: Any, name: str) -> None:
    """Record the autograd node that made a module's output tensor."""
    if isinstance(out, Tensor) and out.grad_fn is not None:
        produced[out.grad_fn] = name


def prune_structured(model: MultiTaskModel, example: Tensor, options: PruneOptions, ignored: set[str],
                     loss_fn: Callable[[MultiTaskModel], Tensor] | None) -> int:
    """Remove `options.amount` of the channels of every prunable group (layer-wise, not global, so no stage is
    emptied); returns how many Conv/Linear layers changed shape."""
    import torch_pruning as tp

    shapes = {name: m.weight.shape for name, m in model.named_modules() if isinstance(m, PRUNABLE)}
    modules = dict(model.named_modules())
    pruner = tp.pruner.MetaPruner(
        model, example, importance=importance(options.method), pruning_ratio=options.amount,
        global_pruning=False, ignored_layers=[modules[name] for name in sorted(ignored)],
        round_to=options.round_to,
        output_transform=lambda outputs: list(named_outputs(model, outputs).values()))
    if options.method == "taylor":
        model.zero_grad()
        loss = loss_fn(model) if loss_fn is not None else default_loss(model, example)
        loss.backward()
        check_gradients(model)
    pruner.step()
    release(pruner)
    model.zero_grad(set_to_none=True)
    update_backbone_channels(model, example)
    return sum(m.weight.shape != shapes[name] for name, m in model.named_modules() if isinstance(m, PRUNABLE))


def release(pruner: tp.pruner.MetaPruner) -> None:
    """Drop the dependency graph now. Its nodes form reference cycles and hold the traced autograd nodes,
    which would otherwise wait for a garbage collection at an arbitrary later moment (once, in a fresh-clone
    test run, the interpreter aborted inside such a collection after these tests); collect them here, where
    it is known what is freed."""
    graph = pruner.DG
    for node in graph.module2node.values():
        node.grad_fn = None
        node.inputs.clear()
        node.outputs.clear()
        node.dependencies.clear()
    graph.module2node.clear()
    gc.collect()


def importance(method: str) -> tp.importance.Importance:
    """L1 weight magnitude, or first-order Taylor (|weight x gradient|, needs a backward pass first)."""
    import torch_pruning as tp

    return tp.importance.MagnitudeImportance(p=1) if method == "l1" else tp.importance.TaylorImportance()


def check_gradients(model: nn.Module) -> None:
    """Taylor ranks a channel by |weight x gradient|: a layer the loss never reached would rank all its channels
    zero and be pruned arbitrarily, so refuse, naming the heads (or backbone) the loss missed."""
    missed = sorted({".".join(name.split(".")[:2]) for name, p in model.named_parameters()
                     if p.requires_grad and p.grad is None})
    if missed:
        model.zero_grad(set_to_none=True)
        raise ValueError(f"taylor: the loss reaches no parameter of {missed}; give a loss_fn over every head")


def default_loss(model: MultiTaskModel, example: Tensor) -> Tensor:
    """A stand-in loss for Taylor ranking without data: the sum of the named outputs' means."""
    return sum(t.float().mean() for t in named_outputs(model, model(example)).values())


def update_backbone_channels(model: MultiTaskModel, example: Tensor) -> None:
    """`Backbone.channels` (read by code that builds or inspects heads) must follow the pruned stages."""
    with torch.no_grad():
        features = model.backbone(example)
    model.backbone.channels = [f.shape[1] for f in features]


def prune_unstructured(model: MultiTaskModel, amount: float, ignored: set[str]) -> tuple[int, float]:
    """Zero the `amount` smallest-magnitude weights of each Conv/Linear (per layer) and bake the zeros in;
    returns (layers pruned, fraction of zeros over those layers' weights)."""
    layers = [m for name, m in model.named_modules() if isinstance(m, PRUNABLE) and name not in ignored]
    for module in layers:
        torch_prune.l1_unstructured(module, "weight", amount=amount)
        torch_prune.remove(module, "weight")   # the mask multiplies into the weight; no reparametrisation left
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    total = sum(m.weight.numel() for m in layers)
    return len(layers), zeros / max(total, 1)


def pruned_state(model: nn.Module) -> dict[str, Any]:
    """A pruned model's weights with its architecture (see `load_pruned`)."""
    return {"state_dict": model.state_dict(), "architecture": architecture(model)}


def load_pruned(model: nn.Module, state: dict[str, Any]) -> nn.Module:
    """Resize a freshly built model of the same config to the pruned shapes in `state`, then load the weights
    (strictly: a name or shape mismatch raises). Returns `model`."""
    resize_to(model, state["architecture"], state["state_dict"])
    model.load_state_dict(state["state_dict"])
    return model
