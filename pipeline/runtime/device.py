"""Device and mixed-precision choice: CUDA when present, bf16/fp16 autocast there, fp32 on the CPU."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch


@dataclass
class Precision:
    dtype: torch.dtype | None      # None: plain fp32
    device_type: str

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        # Only fp16 needs loss scaling; a disabled scaler is a pass-through.
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device: {name!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return device


def select_precision(amp: str, device: torch.device) -> Precision:
    if amp == "auto":
        if device.type != "cuda":
            return Precision(None, device.type)
        # Emulated bf16 (V100, T4) runs far slower than fp16 with loss scaling: only native bf16 counts.
        amp = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    return Precision(dtypes[amp], device.type)
