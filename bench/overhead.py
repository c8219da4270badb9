"""What the pipeline costs on top of plain PyTorch, measured side by side in one run (issue 5):

- loop:   Trainer.train_epoch against a minimal hand-written loop (same model, batches, optimiser, clipping,
          loss); target: pipeline >= 0.97 of the raw loop's images/s.
- mlflow: Trainer.train_epoch with a real Tracker (local sqlite store, train.log_every=1) against
          tracker=None; target: >= 0.99.
- ddp:    `torchrun --nproc_per_node=2` with OMP_NUM_THREADS=1 per process against one process with
          OMP_NUM_THREADS=2, the same config and global batch, through the CLI; images/s read from the
          checkpoint's per-epoch history.

The in-process parts train ResNet-18 (random init) with a classification and a U-Net head on in-memory
batches of the synthetic shapes set, so data loading is excluded from both sides. Both sides of a comparison
step the very same model and optimiser (see RawLoop). Rounds alternate which side goes first (A B, B A, ...)
after a warm-up round of each, so drift on a shared machine hits both; each round's ratio compares two
neighbouring measurements. A control compares the Trainer with itself: the noise floor of the median.
Minor page faults are counted per step: with glibc's default malloc, whether the last step's outputs are
still alive during the next forward decides how much memory is handed back to the kernel and faulted in
again, which moves a step by several per cent (the "explanation" row; GLIBC_TUNABLES removes the effect).

Other jobs on a 2-core machine stall a 2-thread step several-fold at random, which swamps a 1-3 % effect,
so each in-process part also measures its cost in isolation: the pipeline's extra milliseconds per step on
tiny inputs with one thread, and the CPU time per step of logging alone; set against the fastest full-size
step, these give a ratio that noise barely moves. Prints Markdown tables for docs/BENCHMARKS.md.

    .venv/bin/python bench/overhead.py [--rounds 16] [--steps 4] [--part all|loop|mlflow|ddp]

It runs with the malloc thresholds `python -m pipeline` sets (pipeline/runtime/allocator.py); prefix
PIPELINE_MALLOC=default for glibc's defaults.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.runtime.allocator import keep_freed_memory  # noqa: E402

# The allocator setting `python -m pipeline` makes before torch allocates (PIPELINE_MALLOC=default: glibc's own).
MALLOC_TUNED = keep_freed_memory()

import torch  # noqa: E402
import yaml  # noqa: E402

from datasets.sampling import ResumableDistributedSampler  # noqa: E402
from pipeline.engine.checkpoint import load_checkpoint  # noqa: E402
from pipeline.config.schema import Config, config_to_dict, parse_config  # noqa: E402
from pipeline.engine.data import build_splits, train_loader  # noqa: E402
from pipeline.runtime.device import select_precision  # noqa: E402
from pipeline.model import MultiTaskModel, build_model  # noqa: E402
from pipeline.tracking.tracker import Tracker  # noqa: E402
from pipeline.engine.trainer import DataInfo, Trainer  # noqa: E402

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
LR, WEIGHT_DECAY, GRAD_CLIP = 2e-3, 1e-4, 10.0


@dataclass
class Sizes:
    image_size: int
    batch_size: int
    steps: int                  # optimiser steps per round (one Trainer epoch)


DDP_SIZES = Sizes(image_size=64, batch_size=32, steps=8)    # global batch; steps per epoch
# The same model on tiny inputs: the step shrinks, the per-step bookkeeping does not.
SMALL_SIZES = Sizes(image_size=32, batch_size=2, steps=4)


@dataclass
class Side:
    """Per round: seconds, and minor page faults of the process (glibc handing freed memory back to the
    kernel and faulting it in again costs several per cent of a step here)."""
    seconds: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)


@dataclass
class Comparison:
    """Per-round measurements of a baseline and a candidate doing the same work."""
    name: str
    baseline: str
    candidate: str
    sizes: Sizes
    base: Side
    cand: Side
    target: float | None            # None: no target (the control and the explanation rows)

    def ratios(self) -> list[float]:
        # candidate images/s over baseline images/s = baseline time over candidate time
        return [b / c for b, c in zip(self.base.seconds, self.cand.seconds)]

    def images_per_second(self, seconds: float) -> float:
        return self.sizes.steps * self.sizes.batch_size / seconds

    def step_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.sizes.steps

    def extra_ms(self) -> list[float]:
        """Per round: what the candidate took beyond the baseline, per step."""
        return [1000 * (c - b) / self.sizes.steps for b, c in zip(self.base.seconds, self.cand.seconds)]

    def faults_per_step(self, side: Side) -> float:
        return statistics.median(side.faults) / self.sizes.steps


@dataclass
class LoggingCost:
    """What per-step logging costs by itself, with no training beside it."""
    values_per_step: int
    steps: int
    main_thread_ms: float           # per step: Tracker.log_metrics on the trainer's thread
    background_cpu_ms: float        # per step: CPU of the other threads (metric sender, sqlite), flush included
    end_seconds: float              # Tracker.end after the last step


@dataclass
class DdpRun:
    label: str
    processes: int
    threads: int
    batch_per_process: int
    images_per_second: list[float]      # one per epoch, from the checkpoint's history
    data_wait: list[float]
    wall_seconds: float


# ---- data and model -----------------------------------------------------------------------------------------

def config_for(root: Path, sizes: Sizes, epochs: int, train_images: int, val_images: int = 8) -> dict:
    return {
        "name": "bench_overhead", "seed": 0, "output_dir": str(root / "runs"),
        "data": {"train": str(root / "data/train/annotations.json"), "val": str(root / "data/val/annotations.json"),
                 "image_size": sizes.image_size, "batch_size": sizes.batch_size, "num_workers": 0,
                 "shapes": {"train_images": train_images, "val_images": val_images}},
        "model": {"backbone": {"name": "resnet18", "pretrained": False},
                  "heads": {"cls": {"type": "classification"}, "seg": {"type": "unet"}}},
        "train": {"epochs": epochs, "device": "cpu", "amp": "fp32", "grad_clip": GRAD_CLIP, "log_every": 1,
                  "optimizer": {"name": "adamw", "lr": LR, "weight_decay": WEIGHT_DECAY},
                  "scheduler": {"name": "cosine", "warmup_epochs": 0.5}},
        "tracking": {"uri": f"sqlite:///{root}/mlflow.db", "experiment": "bench_overhead"},
    }


class BatchList(torch.utils.data.Dataset):
    """Ready-made batches keyed like the trainer's sampler keys: (epoch, index) -> batch."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, key):
        return self.batches[key[1]]


def batch_loader(batches: list) -> torch.utils.data.DataLoader:
    """The in-memory batches behind the sampler the Trainer requires (one batch per index)."""
    dataset = BatchList(batches)
    sampler = ResumableDistributedSampler(dataset, num_replicas=1, rank=0, seed=0)
    return torch.utils.data.DataLoader(dataset, batch_size=1, sampler=sampler, collate_fn=lambda items: items[0])


@dataclass
class Setup:
    sizes: Sizes
    config: Config
    model: MultiTaskModel           # the initial weights; each Trainer gets its own copy
    batches: list
    data_info: DataInfo
    root: Path


def make_setup(root: Path, sizes: Sizes, rounds: int) -> Setup:
    """Shapes images read once through the pipeline's own dataset and collate, then kept in memory."""
    # Epochs enough for the schedule of a Trainer that runs both sides of a comparison.
    raw = config_for(root, sizes, epochs=2 * (rounds + 1), train_images=sizes.steps * sizes.batch_size)
    config = parse_config(raw)
    splits = build_splits(config.data)
    batches = list(train_loader(splits.train, config.data, config.seed))
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=len(splits.class_names), in_channels=config.data.channels)
    return Setup(sizes, config, model, batches[:sizes.steps], DataInfo(splits.class_names, splits.category_ids, splits.image_policy.to_dict()),
                 root)


def make_trainer(setup: Setup, tracker: Tracker | None, folder: str) -> Trainer:
    return Trainer(setup.config, copy.deepcopy(setup.model), batch_loader(setup.batches), [], setup.data_info,
                   torch.device("cpu"), select_precision("fp32", torch.device("cpu")), setup.root / folder, tracker)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- the two sides ------------------------------------------------------------------------------------------

class RawLoop:
    """The loop a user writes by hand: forward, sum of the heads' losses, backward, clip, step.

    It trains the Trainer's own model with the Trainer's own AdamW: in development runs two copies of the
    same model stepped a few per cent apart through their allocation history alone, which would swamp what
    is measured here. The AdamW's per-stage parameter groups cost nothing measurable.

    Written the usual way, `outputs` and `loss` stay alive into the next step; that changes what glibc hands
    back to the kernel between steps, hence the page faults. `free_outputs` drops them after backward, as the
    Trainer (whose step is a function) does."""

    def __init__(self, model: MultiTaskModel, optimizer: torch.optim.Optimizer, batches: list,
                 free_outputs: bool = False) -> None:
        self.model, self.optimizer, self.batches, self.free_outputs = model, optimizer, batches, free_outputs

    def epoch(self) -> None:
        self.model.train()
        for batch in self.batches:
            self.optimizer.zero_grad(set_to_none=True)
            outputs = self.model(batch.image)
            loss = sum(sum(head.loss(outputs[task], batch).values()) for task, head in self.model.heads.items())
            loss.backward()
            if self.free_outputs:
                del outputs, loss
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
            self.optimizer.step()


class TrainerEpochs:
    """One Trainer epoch per call, with `tracker` (None: off), epoch numbers counting up as fit() would.
    Two of these may share a Trainer, so on and off run on the same memory (see RawLoop)."""

    def __init__(self, trainer: Trainer, tracker: Tracker | None = None) -> None:
        self.trainer, self.tracker = trainer, tracker

    def epoch(self) -> None:
        self.trainer.tracker = self.tracker
        self.trainer.train_epoch(self.trainer.state.position.global_step // self.trainer.steps_per_epoch)


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(run: Callable[[], None], side: Side) -> None:
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    side.seconds.append(timed(run))
    side.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)


def interleave(baseline: Callable[[], None], candidate: Callable[[], None], rounds: int,
               quiet: bool = False) -> tuple[Side, Side]:
    """A warm-up round of each, then `rounds` measured rounds, alternating which side goes first."""
    baseline(), candidate()
    base, cand = Side(), Side()
    for index in range(rounds):
        order = [(baseline, base), (candidate, cand)]
        for run, side in order if index % 2 == 0 else reversed(order):
            measure(run, side)
        if not quiet:
            print(f"  round {index + 1}/{rounds}: baseline {base.seconds[-1]:.3f} s, "
                  f"candidate {cand.seconds[-1]:.3f} s, ratio {base.seconds[-1] / cand.seconds[-1]:.3f}", flush=True)
    return base, cand


# ---- pipeline against the raw loop ----------------------------------------------------------------------------

def bench_loop(setup: Setup, rounds: int, quiet: bool = False, free_outputs: bool = False) -> Comparison:
    trainer = make_trainer(setup, None, "loop")
    raw = RawLoop(trainer.model, trainer.optimizer, setup.batches, free_outputs)
    base, cand = interleave(raw.epoch, TrainerEpochs(trainer).epoch, rounds, quiet)
    if free_outputs:
        return Comparison("explanation", "raw loop freeing its outputs after backward", "Trainer.train_epoch",
                          setup.sizes, base, cand, None)
    return Comparison("pipeline vs raw loop", "raw PyTorch loop", "Trainer.train_epoch", setup.sizes, base, cand,
                      0.97)


def bench_identical(setup: Setup, rounds: int) -> Comparison:
    """Control: the same Trainer on both sides; how far the median ratio strays from 1.0 is the noise floor."""
    same = TrainerEpochs(make_trainer(setup, None, "control"))
    base, cand = interleave(same.epoch, same.epoch, rounds)
    return Comparison("control (expect 1.0)", "the same Trainer", "Trainer.train_epoch", setup.sizes, base, cand,
                      None)


def bench_loop_extra(setup: Setup, rounds: int) -> Comparison:
    """Tiny inputs, one thread: the pipeline's per-step bookkeeping is serial Python, and one thread is not
    stalled at OpenMP barriers when another job takes a core."""
    with torch_threads(1):
        return bench_loop(setup, rounds, quiet=True)


# ---- MLflow on against off ------------------------------------------------------------------------------------

def open_tracker(setup: Setup, folder: str) -> Tracker:
    """A started Tracker on the setup's sqlite store, with the local copy run_training keeps."""
    tracker = Tracker(setup.config.tracking)
    tracker.start(config_to_dict(setup.config), tags={})   # creating the sqlite store is not per-step cost
    tracker.keep_local_copy(setup.root / folder / "metrics.jsonl")
    return tracker


def bench_mlflow(setup: Setup, rounds: int) -> tuple[Comparison, float, dict[str, float]]:
    """Also returns the seconds Tracker.end took to send what was still queued, and one step's values."""
    tracker = open_tracker(setup, "mlflow_on")
    trainer = make_trainer(setup, None, "mlflow")
    base, cand = interleave(TrainerEpochs(trainer).epoch, TrainerEpochs(trainer, tracker).epoch, rounds)
    end = timed(tracker.end)
    comparison = Comparison("MLflow on vs off", "tracker=None", "Tracker, sqlite, log_every=1", setup.sizes,
                            base, cand, 0.99)
    return comparison, end, trainer.state.last_step


def logging_cost(setup: Setup, values: dict[str, float], folder: str, pace: float, steps: int = 60) -> LoggingCost:
    """Log `values` `steps` times, `pace` seconds apart, then end the run: the main thread's CPU time and that of
    everything else (the sender thread writing to sqlite). Paced, the sender sends each step on its own, as in
    training; unpaced (pace 0), it sends them in few large batches."""
    tracker = open_tracker(setup, folder)
    cpu, main = time.process_time(), time.thread_time()
    for step in range(1, steps + 1):
        tracker.log_metrics(values, step=step)
        time.sleep(pace)
    logging = time.thread_time() - main
    end = timed(tracker.end)
    background = time.process_time() - cpu - (time.thread_time() - main)
    return LoggingCost(len(values), steps, 1000 * logging / steps, 1000 * background / steps, end)


# ---- DDP against one process ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_run(root: Path, config: Path, label: str, processes: int, global_batch: int, epochs: int) -> DdpRun:
    """One `python -m pipeline train` (under torchrun when processes > 1), total threads = 2."""
    threads = 2 // processes
    batch = global_batch // processes
    output = root / "runs" / label
    overrides = [f"data.batch_size={batch}", f"train.epochs={epochs}", f"output_dir={output}"]
    launcher = [sys.executable, "-m"] if processes == 1 else [
        TORCHRUN, f"--nproc_per_node={processes}", "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run([*launcher, "pipeline", "train", str(config), *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{label}: the train run failed (exit {done.returncode}):\n{done.stdout[-3000:]}"
                           f"{done.stderr[-3000:]}")
    (checkpoint,) = output.glob("*/*/last.pt")
    history = load_checkpoint(checkpoint)["history"]
    return DdpRun(label, processes, threads, batch, [h["system/images_per_second"] for h in history],
                  [h["system/data_wait_fraction"] for h in history], wall)


def bench_ddp(root: Path, sizes: Sizes, epochs: int, repeats: int) -> list[DdpRun]:
    """Alternating single / DDP runs of the same config; the first run generates the shapes set."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "ddp.yaml"
    config.write_text(yaml.safe_dump(config_for(root, sizes, epochs, sizes.steps * sizes.batch_size, val_images=64)))
    runs = []
    for index in range(repeats):
        for processes in (1, 2):
            label = f"{processes}proc-{index + 1}"
            runs.append(train_run(root, config, label, processes, sizes.batch_size, epochs))
            print(f"  {label}: images/s per epoch {' '.join(f'{v:.1f}' for v in runs[-1].images_per_second)}, "
                  f"wall {runs[-1].wall_seconds:.0f} s", flush=True)
    return runs


# ---- report -------------------------------------------------------------------------------------------------

def comparison_row(c: Comparison) -> str:
    ratios = c.ratios()
    target = f">= {c.target}" if c.target else "-"
    return (f"| {c.name}: {c.candidate} / {c.baseline} | {c.images_per_second(statistics.median(c.base.seconds)):.1f} "
            f"| {c.images_per_second(statistics.median(c.cand.seconds)):.1f} | **{statistics.median(ratios):.3f}** "
            f"[{min(ratios):.3f}, {max(ratios):.3f}] | {c.faults_per_step(c.base):.0f} / "
            f"{c.faults_per_step(c.cand):.0f} | {target} |")


def comparison_table(comparisons: list[Comparison]) -> str:
    return "\n".join(["| comparison | baseline images/s (median round) | candidate images/s (median round) "
                      "| ratio, median of rounds [min, max] | page faults per step, baseline / candidate | target |",
                      "|---|---|---|---|---|---|", *map(comparison_row, comparisons)])


def estimate(best_step_ms: float, extra_ms: float) -> float:
    """The ratio when each step of the fastest full-size round pays `extra_ms` more."""
    return best_step_ms / (best_step_ms + extra_ms)


def cost_table(loop: tuple[Comparison, Comparison] | None, mlflow: tuple[Comparison, LoggingCost] | None) -> str:
    lines = ["| comparison | cost per step, measured alone | fastest full-size baseline step | estimated ratio "
             "| target |", "|---|---|---|---|---|"]
    if loop:
        full, small = loop
        extra = small.extra_ms()
        q1, median, q3 = statistics.quantiles(extra, n=4)
        best = full.step_ms(min(full.base.seconds))
        lines.append(f"| pipeline vs raw loop | {median:.2f} ms (quartiles {q1:.2f}, {q3:.2f}): Trainer step minus "
                     f"raw step on tiny inputs, 1 thread ({small.step_ms(statistics.median(small.base.seconds)):.0f}"
                     f" ms raw step) | {best:.0f} ms | **{estimate(best, median):.3f}** | >= {full.target} |")
    if mlflow:
        full, cost = mlflow
        extra = cost.main_thread_ms + cost.background_cpu_ms
        best = full.step_ms(min(full.base.seconds))
        lines.append(f"| MLflow on vs off | {extra:.2f} ms: {cost.main_thread_ms:.2f} ms on the trainer's thread + "
                     f"{cost.background_cpu_ms:.2f} ms CPU in the sender thread (one sqlite log_batch of "
                     f"{cost.values_per_step} values per step), all counted as taken from training | {best:.0f} ms "
                     f"| **{estimate(best, extra):.3f}** | >= {full.target} |")
    return "\n".join(lines)


def logging_summary(paced: LoggingCost, coalesced: LoggingCost, end_seconds: float) -> str:
    """Where the logging CPU goes: a fixed cost per log_batch call (paced: one call per step) and a cost per
    value (coalesced: a few calls for every step)."""
    per_value = coalesced.background_cpu_ms / coalesced.values_per_step
    return (f"Tracker.end after the MLflow rounds (sending what was still queued): {end_seconds:.2f} s. Sender CPU "
            f"per step of {paced.values_per_step} values: {paced.background_cpu_ms:.2f} ms sent as one log_batch per "
            f"step, {coalesced.background_cpu_ms:.2f} ms when {coalesced.steps} steps are queued at once and sent in "
            f"a few batches: about {paced.background_cpu_ms - coalesced.background_cpu_ms:.1f} ms per log_batch "
            f"call plus {per_value:.3f} ms per value.")


def ddp_table(runs: list[DdpRun]) -> str:
    lines = ["| run | processes x threads | batch per process | images/s per epoch | steady images/s "
             "(median, epochs 2+) | data wait | wall s |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.label} | {r.processes} x {r.threads} | {r.batch_per_process} | "
                     f"{' '.join(f'{v:.1f}' for v in r.images_per_second)} | {steady(r.images_per_second):.1f} | "
                     f"{statistics.mean(r.data_wait):.1%} | {r.wall_seconds:.0f} |")
    single = [steady(r.images_per_second) for r in runs if r.processes == 1]
    double = [steady(r.images_per_second) for r in runs if r.processes == 2]
    pairs = [d / s for s, d in zip(single, double)]
    lines.append(f"\nDDP 2 x 1 thread / 1 process x 2 threads, steady images/s: **{statistics.median(pairs):.3f}** "
                 f"(per pair: {', '.join(f'{p:.3f}' for p in pairs)})")
    return "\n".join(lines)


def steady(values: list[float]) -> float:
    """The median over epochs after the first (which pays for warm-up); the only epoch when there is one."""
    return statistics.median(values[1:] or values)


def machine() -> str:
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU used, "
            f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads in-process, "
            f"Python {platform.python_version()}, commit {commit()}, "
            f"malloc thresholds {'fixed by pipeline/runtime/allocator.py' if MALLOC_TUNED else 'glibc defaults'}, "
            f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")


def commit() -> str:
    """The checked-out commit, '+' when pipeline/ has uncommitted changes (what was measured is then newer)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + ("+" if git("status", "--porcelain", "pipeline") else "")


@dataclass
class Results:
    comparisons: list[Comparison] = field(default_factory=list)     # full size, interleaved
    loop: tuple[Comparison, Comparison] | None = None               # (full size, tiny inputs)
    mlflow: tuple[Comparison, LoggingCost] | None = None
    end_seconds: float = 0.0                                        # Tracker.end after the MLflow rounds
    coalesced: LoggingCost | None = None                            # the same logging, sent in large batches
    ddp_runs: list[DdpRun] = field(default_factory=list)
    loads: dict[str, tuple[float, float]] = field(default_factory=dict)   # part -> load average before, after


def run_parts(args: argparse.Namespace, sizes: Sizes, root: Path) -> Results:
    results = Results()
    wanted = ("loop", "mlflow", "ddp") if args.part == "all" else (args.part,)
    small_rounds = 3 * args.rounds      # tiny steps are cheap: more rounds, a steadier median
    if "loop" in wanted or "mlflow" in wanted:
        full = make_setup(root / "full", sizes, args.rounds)
    for part in wanted:
        print(part, flush=True)
        before = os.getloadavg()[0]
        if part == "loop":
            loop = bench_loop(full, args.rounds)
            results.comparisons += [loop, bench_loop(full, args.rounds, free_outputs=True),
                                    bench_identical(full, args.rounds)]
            small = make_setup(root / "small", SMALL_SIZES, small_rounds)
            results.loop = (loop, bench_loop_extra(small, small_rounds))
        elif part == "mlflow":
            mlflow, results.end_seconds, values = bench_mlflow(full, args.rounds)
            results.comparisons.append(mlflow)
            results.mlflow = (mlflow, logging_cost(full, values, "paced", pace=0.05))
            results.coalesced = logging_cost(full, values, "coalesced", pace=0.0)
        else:
            results.ddp_runs = bench_ddp(root / "ddp", DDP_SIZES, args.ddp_epochs, args.ddp_repeats)
        results.loads[part] = (before, os.getloadavg()[0])
    return results


def report(results: Results, args: argparse.Namespace, sizes: Sizes) -> None:
    print(f"\n{machine()}")
    print("1-minute load average before/after each part (this run adds ~2): "
          + ", ".join(f"{part} {a:.1f}/{b:.1f}" for part, (a, b) in results.loads.items()) + "\n")
    if results.comparisons:
        print(f"ResNet-18 + classification + U-Net, {sizes.image_size} px, batch {sizes.batch_size}, "
              f"{sizes.steps} steps per round, {args.rounds} rounds\n")
        print(comparison_table(results.comparisons))
        print(f"\nCost measured alone: the Trainer's extra time per step on tiny inputs (the same model at "
              f"{SMALL_SIZES.image_size} px, batch {SMALL_SIZES.batch_size}, {SMALL_SIZES.steps} steps per round, "
              f"{3 * args.rounds} rounds); the CPU time of logging with no training beside it\n")
        print(cost_table(results.loop, results.mlflow))
    if results.mlflow:
        print("\n" + logging_summary(results.mlflow[1], results.coalesced, results.end_seconds))
    if results.ddp_runs:
        print(f"\nResNet-18 + classification + U-Net, {DDP_SIZES.image_size} px, global batch {DDP_SIZES.batch_size}, "
              f"{DDP_SIZES.steps} steps per epoch, {args.ddp_epochs} epochs\n")
        print(ddp_table(results.ddp_runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=16, help="timed rounds per full-size comparison")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per round")
    parser.add_argument("--part", choices=["all", "loop", "mlflow", "ddp"], default="all")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ddp-epochs", type=int, default=3)
    parser.add_argument("--ddp-repeats", type=int, default=2, help="single/DDP run pairs")
    args = parser.parse_args()
    sizes = Sizes(args.image_size, args.batch_size, args.steps)
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        results = run_parts(args, sizes, Path(tmp))
    report(results, args, sizes)


if __name__ == "__main__":
    main()
