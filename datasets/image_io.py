"""The one image policy: any file (8/16-bit, float, 1-N channels, alpha, EXIF) -> the array a reader hands on.

Every reader decodes through `read_image`, so training, evaluation and prediction see the same pixels:

- Depth (`intensity`). 8-bit data is divided by 255, as it always was. Anything else (16-bit, 12-bit in
  16, 32-bit, float) keeps full precision until it is mapped to [0, 1]:
  `auto`: per image, the `percentiles` (default 0.5 and 99.5) of its values become 0 and 1;
  `(lo, hi)`: a fixed range, for every image whatever its depth (e.g. (0, 4095) for 12-bit data);
  `dataset`: one range from statistics of the training split (`dataset_range`), stored in the checkpoint.
  A user who stored 0-212 in a 16-bit file therefore sees nuclei, not a black image.
- Channels. Grey files are replicated to `channels: 3` for pretrained RGB backbones; `channels: 1` keeps
  them grey (RGB is converted to luminance); `channels: N` keeps the N bands of a multispectral file.
- Alpha. An alpha channel is composited over a grey `alpha_background` in [0, 1].
- EXIF orientation. With `exif_orientation`, the file's orientation tag is applied, to images and masks
  alike (`read_label_image`), so annotations drawn on the displayed picture stay aligned.
- TIFF (multi-page, large, float, planar) is read through tifffile; other formats through OpenCV.

The result is HxWxC: uint8 for 8-bit data under `auto` (cheap to augment; the transform divides by 255),
else float32 in [0, 1].
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
TIFF_SUFFIXES = {".tif", ".tiff"}
EXIF_ORIENTATION_TAG = 0x0112
SAMPLE_PIXELS = 1_000_000  # percentiles of larger images are taken on a strided subsample


@dataclass(frozen=True)
class ImagePolicy:
    intensity: str | tuple[float, float] = "auto"   # "auto" | "dataset" (resolve first) | (lo, hi)
    channels: int = 3
    alpha_background: float = 0.0                   # grey level in [0, 1] under transparent pixels
    exif_orientation: bool = True
    percentiles: tuple[float, float] = (0.5, 99.5)  # for "auto" and "dataset"

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"image policy: channels: expected a positive count, got {self.channels}")
        if not isinstance(self.intensity, str):
            lo, hi = self.intensity
            if not hi > lo:
                raise ValueError(f"image policy: intensity: expected a range [lo, hi] with hi > lo, got {[lo, hi]}")
        elif self.intensity not in ("auto", "dataset"):
            raise ValueError(f"image policy: intensity: expected 'auto', 'dataset' or [lo, hi], got {self.intensity!r}")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(f"image policy: percentiles: expected 0 <= low < high <= 100, got {[low, high]}")

    def to_dict(self) -> dict:
        """Plain data for checkpoints (weights_only loading takes lists, not tuples of floats only)."""
        intensity = self.intensity if isinstance(self.intensity, str) else [float(v) for v in self.intensity]
        return {"intensity": intensity, "channels": self.channels, "alpha_background": self.alpha_background,
                "exif_orientation": self.exif_orientation, "percentiles": list(self.percentiles)}

    @staticmethod
    def from_dict(data: dict) -> "ImagePolicy":
        intensity = data["intensity"] if isinstance(data["intensity"], str) else tuple(data["intensity"])
        return ImagePolicy(intensity=intensity, channels=int(data["channels"]),
                           alpha_background=float(data["alpha_background"]),
                           exif_orientation=bool(data["exif_orientation"]), percentiles=tuple(data["percentiles"]))


def read_image(path: Path, policy: ImagePolicy = ImagePolicy()) -> np.ndarray:
    """HxWxC (C = policy.channels): uint8 for 8-bit files under "auto", else float32 in [0, 1].
    Raises ValueError naming the file when it cannot be decoded or does not fit the policy."""
    if policy.intensity == "dataset":
        raise ValueError(f"{path}: the 'dataset' intensity policy must be resolved to a range first "
                         "(datasets.image_io.dataset_range)")
    raw = decode(path, policy.exif_orientation)
    colour, alpha = _split_alpha(raw, policy.channels)
    if colour.dtype == np.uint8 and policy.intensity == "auto" and alpha is None:
        return _match_channels(colour, policy.channels, path)
    unit = _to_unit(colour, policy)
    if alpha is not None:
        unit = unit * alpha + np.float32(policy.alpha_background) * (1 - alpha)
    unit = _match_channels(unit.astype(np.float32, copy=False), policy.channels, path)
    if colour.dtype == np.uint8 and policy.intensity == "auto":  # 8-bit with alpha: stay on the uint8 path
        return np.round(unit * 255).astype(np.uint8)
    return unit


def read_label_image(path: Path, exif_orientation: bool = True) -> np.ndarray:
    """A mask file's stored values (HxW or HxWxC, its own dtype), oriented like its image. A palette PNG gives
    its palette indices (the class values of VOC-style masks), not the colours they are shown in."""
    path = Path(path)
    try:
        with Image.open(path) as opened:
            indices = np.array(opened) if opened.mode == "P" else None
    except (OSError, ValueError):
        indices = None
    if indices is None:
        return decode(path, exif_orientation)
    return _oriented(indices, _exif_orientation(path)) if exif_orientation else indices


def decode(path: Path, exif_orientation: bool = True) -> np.ndarray:
    """The stored values, HxW or HxWxC in RGB(A) order and the file's dtype."""
    path = Path(path)
    array = _decode_tiff(path) if path.suffix.lower() in TIFF_SUFFIXES else _decode_with_opencv(path)
    if array is None or array.size == 0:
        raise ValueError(f"{path}: could not decode the file as an image")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return _oriented(array, _exif_orientation(path)) if exif_orientation else array


def _decode_with_opencv(path: Path) -> np.ndarray | None:
    # UNCHANGED keeps 16-bit and alpha; it also skips OpenCV's own EXIF handling, which decode() applies
    # itself, the same way for masks.
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        return _decode_with_pil(path)
    if array.ndim == 3 and array.shape[2] == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if array.ndim == 3 and array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    return array


def _decode_with_pil(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as opened:
            opened.seek(0)
            return np.array(opened.convert("RGBA") if opened.mode == "P" else opened)
    except (OSError, ValueError):
        return None


def _decode_tiff(path: Path) -> np.ndarray | None:
    """The first series, channels last. Planar (CYX) or page-stacked bands (QYX, IYX) become channels;
    a z-stack or time series is not one image and is refused."""
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            array, axes = series.asarray(), series.axes
    except Exception:  # tifffile raises many types for corrupt or exotic files; OpenCV may still read it
        return _decode_with_opencv_only(path)
    return _channels_last(array, axes, path)


def _decode_with_opencv_only(path: Path) -> np.ndarray | None:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is not None and array.ndim == 3 and array.shape[2] in (3, 4):
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB if array.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return array


def _channels_last(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    keep = tiff_plane_axes(array.shape, axes, path)
    squeezed = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    bands = [i for i, axis in enumerate(axes) if axis in "SCQI"]
    if not bands:
        return squeezed
    return np.moveaxis(squeezed, bands[0], -1)


def tiff_plane_axes(shape: Sequence[int], axes: str, path: Path) -> list[int]:
    """The axes of a TIFF series that make one image: Y, X and at most one channel axis (length-1 axes of any
    kind are dropped). From the shape alone, so the header check (datasets/image_header.py) refuses exactly
    what decoding would."""
    keep = [i for i, axis in enumerate(axes) if axis in "YXSCQI"]
    extra = [axes[i] for i in range(len(axes)) if i not in keep and shape[i] > 1]
    if extra:
        raise ValueError(f"{path}: expected a 2-D image (TIFF axes Y, X and channels), got axes {axes!r} with "
                         f"shape {tuple(shape)}; save one plane per file")
    bands = [i for i in keep if axes[i] in "SCQI"]
    if len(bands) > 1:  # e.g. pages of RGB images: only the channel axis itself may remain
        kept = "".join(axes[i] for i in keep)
        raise ValueError(f"{path}: expected one channel axis, got TIFF axes {kept!r} with shape {tuple(shape)}")
    return keep


def _exif_orientation(path: Path) -> int:
    try:
        with Image.open(path) as opened:
            return exif_orientation_of(opened)
    except (OSError, ValueError, SyntaxError):
        return 1


def exif_orientation_of(opened: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent) from an opened file's header. A PNG's eXIf chunk is read where
    the PNG specification puts it, before the pixel data: PIL's getexif() would decode the whole image to look
    behind it, once more for every image already decoded by OpenCV, and the header check could not afford it."""
    if opened.format == "PNG":
        exif = Image.Exif()
        if opened.info.get("exif"):
            exif.load(opened.info["exif"])
        return int(exif.get(EXIF_ORIENTATION_TAG, 1))
    return int(opened.getexif().get(EXIF_ORIENTATION_TAG, 1))


def _oriented(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 2-8 (what shows the picture upright, as PIL's exif_transpose) to HxW[xC]."""
    steps: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        2: lambda a: a[:, ::-1],                          # mirror
        3: lambda a: a[::-1, ::-1],                       # rotate 180
        4: lambda a: a[::-1],                             # flip
        5: lambda a: np.swapaxes(a, 0, 1),                # transpose
        6: lambda a: np.rot90(a, k=-1),                   # rotate 90 clockwise
        7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),    # transverse
        8: lambda a: np.rot90(a, k=1),                    # rotate 90 counter-clockwise
    }
    step = steps.get(orientation)
    return np.ascontiguousarray(step(array)) if step else array


def _split_alpha(raw: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(colour HxWxC, alpha HxWx1 in [0, 1] or None). Grey+alpha and RGBA files have alpha unless the policy
    asks for exactly that many channels (4 bands of a multispectral file are bands, not RGBA)."""
    image = raw[..., None] if raw.ndim == 2 else raw
    bands = image.shape[2]
    if bands in (2, 4) and channels != bands:
        alpha = image[..., -1:].astype(np.float32) / _dtype_max(image.dtype)
        return image[..., :-1], np.clip(alpha, 0.0, 1.0)
    return image, None


def _dtype_max(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def _to_unit(colour: np.ndarray, policy: ImagePolicy) -> np.ndarray:
    """float32 in [0, 1] by the policy's intensity rule."""
    values = colour.astype(np.float32)
    if policy.intensity == "auto":
        if colour.dtype == np.uint8:
            return values / 255.0
        lo, hi = value_range([colour], policy.percentiles)
    else:
        lo, hi = policy.intensity
    if hi <= lo:  # a constant image: no contrast to stretch
        return np.zeros_like(values)
    return np.clip((values - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def value_range(images: Sequence[np.ndarray], percentiles: tuple[float, float]) -> tuple[float, float]:
    """The low and high percentiles of all values of `images` (large ones strided), as floats."""
    samples = []
    for image in images:
        flat = image.reshape(-1)
        step = max(1, flat.size // SAMPLE_PIXELS)
        samples.append(flat[::step].astype(np.float64))
    values = np.concatenate(samples)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(finite, percentiles)
    return float(lo), float(hi)


def dataset_range(paths: Sequence[Path], policy: ImagePolicy, max_images: int = 64) -> tuple[float, float]:
    """The 'dataset' policy's fixed range: the policy's percentiles over (up to `max_images`, evenly spread)
    training images' stored values."""
    if not paths:
        raise ValueError("intensity 'dataset': the training split has no images to compute statistics from")
    step = max(1, len(paths) // max_images)
    images = []
    for path in list(paths)[::step][:max_images]:
        colour, _ = _split_alpha(decode(path, policy.exif_orientation), policy.channels)
        images.append(colour)
    lo, hi = value_range(images, policy.percentiles)
    if not hi > lo:
        raise ValueError(f"intensity 'dataset': the training images have no contrast (every sampled value is {lo}); "
                         "give data.intensity: [lo, hi]")
    return lo, hi


def _match_channels(image: np.ndarray, channels: int, path: Path) -> np.ndarray:
    bands = image.shape[2]
    if bands == channels:
        return image
    if bands == 1 and channels == 3:
        return np.repeat(image, 3, axis=2)
    if bands == 3 and channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    raise ValueError(f"{path}: the image has {bands} channel(s) but data.channels is {channels}; set "
                     f"data.channels: {bands} (the backbone's first convolution is adapted to it)")
