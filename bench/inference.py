"""Inference speed on the CPU: PyTorch eager against TorchScript and onnxruntime, side by side in one run (issue 13).

Two models, each exported by `pipeline.inference.export` as `python -m pipeline export` does (dynamic batch and
size): (a) the default job's model (configs/shapes_multitask.yaml: MobileNetV2 + classification, U-Net, YOLO
and autoencoder heads) at its 96 px, (b) a classification-only MobileNetV2 (1000 classes) at 224 px. Weights
are random (speed does not depend on them). Each runtime returns the same named output tensors: eager runs
`NamedOutputsModel` under torch.inference_mode, TorchScript and onnxruntime run through `TorchScriptRunner` /
`OnnxRunner` (numpy in and out, as a user of the runner pays). Decoding (NMS, argmax) is left out: it is the
same code after every runtime.

Every runtime gets the same threads: torch.set_num_threads(cores) (eager and TorchScript), onnxruntime
intra_op_num_threads = cores, inter_op 1 (`--threads N` sets another count for all alike). After a warm-up of each (TorchScript's profiling executor optimises
during its first calls), rounds interleave the runtimes, the one going first rotating, so drift on a shared
machine hits all alike; a round times `reps` calls of each (about `--seconds` per runtime). Latency is the median
over all calls; a ratio is eager's median latency over the runtime's within one round (> 1: faster than
eager), reported as the median over rounds [min, max]. `--variants` also times onnxruntime session settings at
batch 1. Prints Markdown for docs/BENCHMARKS.md.

    .venv/bin/python bench/inference.py [--rounds 10] [--seconds 0.4] [--variants] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from pipeline.config.schema import load_config, parse_config  # noqa: E402
from pipeline.inference.export import export_model  # noqa: E402
from pipeline.inference.named_outputs import NamedOutputsModel  # noqa: E402
from pipeline.inference.onnx_runner import OnnxRunner, TorchScriptRunner  # noqa: E402
from pipeline.inference.trained import TrainedModel  # noqa: E402
from pipeline.model import build_model  # noqa: E402

CORES = os.cpu_count() or 1
BATCHES = (1, 32)
WARMUP_CALLS = 5


@dataclass
class Case:
    name: str
    trained: TrainedModel
    size: int


@dataclass
class Timings:
    calls: dict[str, list[float]] = field(default_factory=dict)          # runtime -> every call's seconds
    rounds: dict[str, list[float]] = field(default_factory=dict)         # runtime -> each round's median


def default_job() -> Case:
    config = load_config(REPO / "configs/shapes_multitask.yaml", ["model.backbone.pretrained=false"])
    return Case("default job (MobileNetV2 + cls, U-Net, YOLO, AE)", trained(config, ["circle", "square", "triangle"]),
                config.data.image_size)


def mobilenet_classifier() -> Case:
    config = parse_config({"data": {"train": "unused", "val": "unused", "image_size": 224},
                           "model": {"backbone": {"name": "mobilenet_v2", "pretrained": False},
                                     "heads": {"cls": {"type": "classification"}}}})
    return Case("MobileNetV2 classifier (1000 classes)", trained(config, [f"c{i}" for i in range(1000)]), 224)


def trained(config, class_names: list[str]) -> TrainedModel:
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=len(class_names), in_channels=config.data.channels).eval()
    return TrainedModel(model, config, class_names, list(range(1, len(class_names) + 1)), config.data.image_policy(),
                        Path("bench.pt"), {})


def session_options(threads: int, **settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = settings.pop("level", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    for key, value in settings.pop("config", {}).items():
        options.add_session_config_entry(key, value)
    assert not settings, settings
    return options


def runtimes(case: Case, folder: Path, variants: bool, threads: int) -> dict[str, Callable[[torch.Tensor], dict]]:
    heads = case.trained.model.heads
    onnx = export_model(case.trained, folder / "model.onnx").model_path
    script = export_model(case.trained, folder / "model.torchscript.pt", format="torchscript").model_path
    eager_model = NamedOutputsModel(case.trained.model).eval()

    def eager(image: torch.Tensor) -> dict:
        with torch.inference_mode():
            return eager_model(image)

    found = {"eager": eager, "torchscript": TorchScriptRunner(script, heads).named,
             "onnxruntime": OnnxRunner(onnx, heads, session_options=session_options(threads)).named}
    if variants:
        found["ort, no spin-wait"] = OnnxRunner(onnx, heads, session_options=session_options(
            threads, config={"session.intra_op.allow_spinning": "0"})).named
        found["ort, ORT_ENABLE_BASIC"] = OnnxRunner(onnx, heads, session_options=session_options(
            threads, level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)).named
        found["ort, ORT_ENABLE_EXTENDED"] = OnnxRunner(onnx, heads, session_options=session_options(
            threads, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)).named
        static = folder / "static.onnx"
        export_static(case, static)
        found["ort, static 1x3xHxW export"] = OnnxRunner(static, heads, session_options=session_options(threads)).named
    return found


def export_static(case: Case, path: Path) -> None:
    """A batch-1, fixed-size export, bypassing export_model (which traces at batch 2 at least): do fixed shapes
    let onnxruntime fold more?"""
    wrapper = NamedOutputsModel(case.trained.model).eval()
    example = torch.rand(1, 3, case.size, case.size)
    with torch.no_grad():
        names = list(wrapper(example))
    torch.onnx.export(wrapper, (example,), str(path), dynamo=True, input_names=["image"], output_names=names,
                      opset_version=18, verbose=False)


def measure(run: dict[str, Callable], image: torch.Tensor, rounds: int, seconds: float) -> Timings:
    for fn in run.values():
        for _ in range(WARMUP_CALLS):
            fn(image)
    start = time.perf_counter()
    run["eager"](image)
    reps = max(1, round(seconds / (time.perf_counter() - start)))
    timings = Timings({name: [] for name in run}, {name: [] for name in run})
    names = list(run)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            calls = []
            for _ in range(reps):
                start = time.perf_counter()
                run[name](image)
                calls.append(time.perf_counter() - start)
            timings.calls[name] += calls
            timings.rounds[name].append(statistics.median(calls))
    return timings


def rows(case: Case, batch: int, timings: Timings) -> list[str]:
    eager = timings.rounds["eager"]
    lines = []
    for name, calls in timings.calls.items():
        latency = statistics.median(calls)
        ratios = [e / t for e, t in zip(eager, timings.rounds[name])]
        ratio = "1 (reference)" if name == "eager" else \
            f"**{statistics.median(ratios):.2f}** [{min(ratios):.2f}, {max(ratios):.2f}]"
        lines.append(f"| {case.name}, {case.size} px | {batch} | {name} | {batch / latency:.1f} | "
                     f"{latency * 1000:.1f} | {ratio} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=0.4, help="time per runtime per round (sets reps)")
    parser.add_argument("--variants", action="store_true", help="also onnxruntime session variants at batch 1")
    parser.add_argument("--threads", type=int, default=CORES, help=f"intra-op threads per runtime (default {CORES}, "
                        "the cores); 1 keeps a runtime's speed from hanging on another process's use of a core")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    table = ["| model | batch | runtime | images/s | median ms per batch | speed vs eager, median of rounds [min, max] |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for index, case in enumerate([default_job(), mobilenet_classifier()]):
            folder = Path(tmp) / str(index)
            folder.mkdir()
            all_runtimes = runtimes(case, folder, args.variants, args.threads)
            for batch in BATCHES:
                chosen = all_runtimes if batch == 1 else {k: v for k, v in all_runtimes.items()
                                                          if k in ("eager", "torchscript", "onnxruntime")}
                image = torch.rand(batch, 3, case.size, case.size, generator=torch.Generator().manual_seed(batch))
                table += rows(case, batch, measure(chosen, image, args.rounds, args.seconds))
                print(f"done: {case.name} batch {batch}", file=sys.stderr, flush=True)
    print(f"commit {commit}; torch {torch.__version__}, onnxruntime {ort.__version__}; {args.threads} threads per runtime; "
          f"{args.rounds} rounds of ~{args.seconds} s per runtime; 1-minute load before {load_before[0]:.2f}, "
          f"after {os.getloadavg()[0]:.2f}\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
