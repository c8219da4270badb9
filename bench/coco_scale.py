"""Data at COCO scale (issue 12, part 4): time to the first batch and private memory per process.

Writes a COCO-sized annotation file once (default: 118,287 train images with about 7.3 annotations each, like
instances_train2017.json, and a 5,000-image val file), whose image entries all reference ~50 small image files
by name: the annotation side is COCO's size, the pixel side stays small so the run takes minutes. Like COCO's
file: 80 categories with COCO's non-contiguous ids, ~1 % of images without annotations, ~1 % crowd annotations as
uncompressed RLE (counts lists), most objects as 1-3 polygons of 6-40 points with 2-decimal coordinates, and a
few as compressed RLE strings.

Then, in a fresh process (so generating the file costs nothing there), it goes the way `python -m pipeline
train` goes (pipeline/jobs/train.py `_train`): build_splits, check_trainable (which screens every image header of
both splits), summarize (box sizes for the heads), train_loader with 4 workers, the first batch; and reads on
through part of the epoch, sampling the private memory (USS = Private_Clean + Private_Dirty of
/proc/<pid>/smaps_rollup) of the main process and of each worker after the first batch and after
--samples batches. Private memory is what fork does not share: a page a worker writes to, even by changing
a reference count, is copied into it (pytorch/pytorch#13246). Prints a Markdown table for docs/BENCHMARKS.md.

    .venv/bin/python bench/coco_scale.py [--root /tmp/coco_scale] [--samples 0 500 1000 2000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# COCO's 80 category ids: 1..90 without the ten it never used.
CATEGORY_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
FILE_SIZES = [(240, 320), (320, 240), (213, 320), (256, 256), (320, 320)]  # (h, w) of the image files
MIN_AVAILABLE_MB = 2500  # stop reading early rather than push a shared machine into swap or the OOM killer


# ---- the data --------------------------------------------------------------------------------------------------

@dataclass
class Layout:
    train: Path
    val: Path
    images: Path


def layout(root: Path) -> Layout:
    return Layout(root / "annotations/instances_train.json", root / "annotations/instances_val.json", root / "images")


def write_dataset(root: Path, train_images: int, val_images: int, files: int, seed: int) -> Layout:
    paths = layout(root)
    paths.images.mkdir(parents=True, exist_ok=True)
    paths.train.parent.mkdir(parents=True, exist_ok=True)
    sizes = write_image_files(paths.images, files, seed)
    write_split(paths.train, train_images, sizes, seed + 1)
    write_split(paths.val, val_images, sizes, seed + 2)
    return paths


def write_image_files(folder: Path, count: int, seed: int) -> dict[str, tuple[int, int]]:
    """Smooth random pictures, one in ten a PNG: name -> (height, width)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    sizes = {}
    for i in range(count):
        height, width = FILE_SIZES[i % len(FILE_SIZES)]
        coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        name = f"{i:03d}.png" if i % 10 == 9 else f"{i:03d}.jpg"
        picture.save(folder / name, quality=90) if name.endswith(".jpg") else picture.save(folder / name)
        sizes[name] = (height, width)
    return sizes


def write_split(path: Path, count: int, sizes: dict[str, tuple[int, int]], seed: int) -> None:
    """Streamed entry by entry, so writing 860k annotations does not need them all in memory at once."""
    rng = np.random.default_rng(seed)
    names = sorted(sizes)
    images = [(1_000_000 + 7 * i, names[int(rng.integers(len(names)))]) for i in range(count)]  # ids not 1..N
    partial = path.with_suffix(".partial")
    with open(partial, "w") as out:
        out.write('{"info": {"description": "bench/coco_scale.py"}, "categories": ')
        out.write(json.dumps([{"id": cid, "name": f"class{cid}", "supercategory": "thing"} for cid in CATEGORY_IDS]))
        out.write(', "images": [')
        out.write(", ".join(json.dumps({"id": image_id, "file_name": name, "height": sizes[name][0],
                                        "width": sizes[name][1]}) for image_id, name in images))
        out.write('], "annotations": [')
        next_id, first = 1, True
        for image_id, name in images:
            for ann in image_annotations(rng, image_id, sizes[name]):
                out.write(("" if first else ", ") + json.dumps({**ann, "id": next_id}))
                next_id, first = next_id + 1, False
        out.write("]}")
    path.with_suffix(".count").write_text(str(next_id - 1))
    os.replace(partial, path)


def image_annotations(rng: np.random.Generator, image_id: int, size: tuple[int, int]) -> list[dict]:
    if rng.random() < 0.01:
        return []  # COCO: ~1 % of the images have no annotation
    return [annotation(rng, image_id, size) for _ in range(max(1, int(rng.poisson(7.3))))]


def annotation(rng: np.random.Generator, image_id: int, size: tuple[int, int]) -> dict:
    height, width = size
    w, h = (float(v) for v in rng.uniform(4, [width * 0.8, height * 0.8]).round(2))
    x, y = round(float(rng.uniform(0, width - w)), 2), round(float(rng.uniform(0, height - h)), 2)
    kind = rng.random()
    if kind < 0.01:
        segmentation, crowd = rectangle_counts((x, y, w, h), size), 1
    elif kind < 0.015:
        segmentation, crowd = ellipse_rle_string((x, y, w, h), size), 0
    else:
        segmentation, crowd = polygons(rng, (x, y, w, h)), 0
    return {"image_id": image_id, "category_id": CATEGORY_IDS[int(rng.integers(80))], "bbox": [x, y, w, h],
            "area": round(w * h, 2), "iscrowd": crowd, "segmentation": segmentation}


def polygons(rng: np.random.Generator, box: tuple[float, float, float, float]) -> list[list[float]]:
    """1-3 parts (most objects one), each 6-40 points on a jittered ellipse inside the box."""
    x, y, w, h = box
    parts = int(rng.choice([1, 2, 3], p=[0.85, 0.1, 0.05]))
    out = []
    for part in range(parts):
        points = int(rng.integers(6, 41))
        angle = np.sort(rng.uniform(0, 2 * np.pi, points))
        radius = rng.uniform(0.6, 1.0, points) / (part + 1)
        xs = x + w / 2 * (1 + radius * np.cos(angle))
        ys = y + h / 2 * (1 + radius * np.sin(angle))
        out.append(np.stack([xs, ys], 1).round(2).reshape(-1).tolist())
    return out


def rectangle_counts(box: tuple[float, float, float, float], size: tuple[int, int]) -> dict:
    """Uncompressed RLE (column-major runs, zeros first) of the box's pixels, as COCO writes its crowds."""
    height, width = size
    x0, y0 = int(box[0]), int(box[1])
    x1, y1 = min(width, int(np.ceil(box[0] + box[2]))), min(height, int(np.ceil(box[1] + box[3])))
    counts = [x0 * height + y0]
    for column in range(x0, x1):
        gap = height - (y1 - y0) if column < x1 - 1 else (height - y1) + (width - x1) * height
        counts += [y1 - y0, gap]
    return {"size": [height, width], "counts": counts}


def ellipse_rle_string(box: tuple[float, float, float, float], size: tuple[int, int]) -> dict:
    from pycocotools import mask as mask_utils
    height, width = size
    x, y, w, h = box
    rows, columns = np.mgrid[:height, :width]
    inside = ((columns + 0.5 - x - w / 2) / (w / 2)) ** 2 + ((rows + 0.5 - y - h / 2) / (h / 2)) ** 2 <= 1
    rle = mask_utils.encode(np.asfortranarray(inside.astype(np.uint8)))
    return {"size": [height, width], "counts": rle["counts"].decode()}


# ---- the measurement -------------------------------------------------------------------------------------------

@dataclass
class MemorySample:
    batch: int                    # batches the main process had taken when sampled (0: right after the first)
    main_uss_mb: float
    main_rss_mb: float
    worker_uss_mb: list[float]
    worker_rss_mb: list[float]


@dataclass
class Measurement:
    train_images: int
    train_annotations: int
    build_s: float                # build_splits: read, check and index both annotation files
    screen_s: dict[str, float]    # check_trainable's screen of each split (every image header)
    guard_s: float                # check_trainable in all (the screens, inspection, trainability)
    summarize_s: float            # box sizes for the heads
    first_batch_s: float          # train_loader, 4 workers started, the first batch
    total_s: float                # build_splits .. first batch
    peak_main_rss_mb: float       # the main process's peak (ru_maxrss), reached while reading the JSON
    samples: list[MemorySample] = field(default_factory=list)
    stopped: str = ""             # why reading stopped before the last sample, if it did


def measure(paths: Layout, workers: int, batch_size: int, sample_at: list[int]) -> Measurement:
    import pipeline.data_check.guard as guard
    from datasets.summary import summarize
    from pipeline.config.schema import parse_config
    from pipeline.engine.data import build_splits, train_loader

    config = parse_config(bench_config(paths, workers, batch_size), "bench/coco_scale.py")
    screen_s: dict[str, float] = {}
    guard.screen = timed_screen(guard.screen, screen_s)  # the same function, timed
    start = time.perf_counter()
    splits = build_splits(config.data)
    built = time.perf_counter()
    problems = guard.check_trainable(splits, config)
    if problems:
        raise SystemExit("check_trainable refused the data:\n  " + "\n  ".join(problems))
    guarded = time.perf_counter()
    summarize(splits.train, config.data.image_size, config.data.resize)
    summarized = time.perf_counter()
    batches = iter(train_loader(splits.train, config.data, config.seed))
    next(batches)
    first = time.perf_counter()
    result = Measurement(
        train_images=len(splits.train), train_annotations=count_annotations(paths.train),
        build_s=built - start, screen_s=screen_s, guard_s=guarded - built, summarize_s=summarized - guarded,
        first_batch_s=first - summarized, total_s=first - start,
        peak_main_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    read_on(batches, sample_at, result)
    return result


def bench_config(paths: Layout, workers: int, batch_size: int) -> dict:
    """A detection + segmentation + classification job, so the guard checks every kind of target."""
    split = lambda annotations: {"annotations": str(annotations), "images": str(paths.images)}  # noqa: E731
    return {
        "name": "coco_scale",
        "data": {"train": split(paths.train), "val": split(paths.val), "format": "coco", "image_size": 128,
                 "batch_size": batch_size, "num_workers": workers},
        "model": {"backbone": {"name": "mobilenet_v2"},
                  "heads": {"cls": {"type": "classification"}, "seg": {"type": "unet"}, "det": {"type": "yolo"}}},
    }


def timed_screen(screen, seconds: dict[str, float]):
    def timed(dataset, split: str):
        start = time.perf_counter()
        try:
            return screen(dataset, split)
        finally:
            seconds[split] = time.perf_counter() - start
    return timed


def read_on(batches, sample_at: list[int], result: Measurement) -> None:
    """Take batches up to the last sample point, sampling memory at each; stop early if memory runs short."""
    workers = [worker.pid for worker in batches._workers]
    taken = 0
    for target in sorted(sample_at):
        while taken < target:
            next(batches)
            taken += 1
            if taken % 20 == 0 and available_mb() < MIN_AVAILABLE_MB:
                result.samples.append(sample(taken, workers))
                result.stopped = f"stopped after {taken} batches: under {MIN_AVAILABLE_MB} MB of memory left"
                return
        result.samples.append(sample(taken, workers))
        print(f"  after {taken} batches: {result.samples[-1]}", file=sys.stderr, flush=True)


def sample(batch: int, workers: list[int]) -> MemorySample:
    main = memory_mb(os.getpid())
    each = [memory_mb(pid) for pid in workers]
    return MemorySample(batch, main["uss"], main["rss"], [m["uss"] for m in each], [m["rss"] for m in each])


def memory_mb(pid: int) -> dict[str, float]:
    """USS (pages only this process maps: what fork did not share, or no longer does) and RSS, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])  # kB
    return {"uss": (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024, "rss": fields["Rss"] / 1024}


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def count_annotations(path: Path) -> int:
    """As written beside the file (counting them here would put the JSON's objects in the measured process)."""
    return json.loads(path.with_suffix(".count").read_text())


# ---- the report ------------------------------------------------------------------------------------------------

def table(result: Measurement, label: str) -> str:
    rows = [f"| {label}: time to the first batch | {result.total_s:.1f} s (build_splits {result.build_s:.1f}, "
            f"check_trainable {result.guard_s:.1f} of which screening train {result.screen_s.get('train', 0):.1f} "
            f"+ val {result.screen_s.get('val', 0):.1f}, summarize {result.summarize_s:.1f}, loader + first batch "
            f"{result.first_batch_s:.1f}) |",
            f"| {label}: main process peak RSS (while reading) | {result.peak_main_rss_mb:.0f} MB |"]
    for s in result.samples:
        workers = ", ".join(f"{mb:.0f}" for mb in s.worker_uss_mb)
        rows.append(f"| {label}: after {s.batch} batches: private MB main / workers | {s.main_uss_mb:.0f} (RSS "
                    f"{s.main_rss_mb:.0f}) / {workers} |")
    if result.stopped:
        rows.append(f"| {label}: | {result.stopped} |")
    return "\n".join(rows)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    memory = next(int(line.split()[1]) // 1024 ** 2 for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    return f"{os.cpu_count()} CPU cores ({model}), {memory} GB RAM, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/coco_scale"))
    parser.add_argument("--train-images", type=int, default=118_287)
    parser.add_argument("--val-images", type=int, default=5_000)
    parser.add_argument("--files", type=int, default=50, help="distinct image files the entries reference")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--samples", type=int, nargs="+", default=[0, 500, 1000, 2000])
    parser.add_argument("--label", default="this code")
    parser.add_argument("--measure", action="store_true", help="(internal) measure only, in this process")
    parser.add_argument("--json", type=Path, help="also write the measurement here")
    args = parser.parse_args()
    paths = layout(args.root)
    if args.measure:
        result = measure(paths, args.workers, args.batch_size, args.samples)
        print(json.dumps(asdict(result)))
        return
    if not (paths.train.exists() and paths.val.exists()):
        start = time.perf_counter()
        write_dataset(args.root, args.train_images, args.val_images, args.files, seed=0)
        print(f"wrote {args.root} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    child = subprocess.run([sys.executable, __file__, "--measure", *sys.argv[1:]], stdout=subprocess.PIPE,
                           text=True, check=True)
    result = Measurement(**json.loads(child.stdout.strip().splitlines()[-1]))
    result.samples = [MemorySample(**s) for s in result.samples]  # type: ignore[arg-type]
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=1))
    print(f"{machine()}; {result.train_images} train images, {result.train_annotations} annotations; "
          f"{args.workers} workers, batch {args.batch_size}")
    print("| measure | value |\n|---|---|")
    print(table(result, args.label))


if __name__ == "__main__":
    main()
