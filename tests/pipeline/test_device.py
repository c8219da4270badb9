"""amp: auto picks native bf16 on CUDA, fp16 where bf16 would only be emulated, and fp32 on the CPU."""
from __future__ import annotations

import pytest
import torch

from pipeline.runtime.device import select_precision


def gpu(native_bf16: bool):
    """torch.cuda.is_bf16_supported of a GPU: emulation counts unless asked not to (V100 and T4 emulate)."""
    return lambda including_emulation=True: native_bf16 or including_emulation


@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_takes_bf16_only_where_it_is_native(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", gpu(native_bf16))
    assert select_precision("auto", torch.device("cuda")).dtype == expected


def test_auto_is_fp32_on_the_cpu_and_an_explicit_choice_is_kept():
    assert select_precision("auto", torch.device("cpu")).dtype is None
    assert select_precision("bf16", torch.device("cpu")).dtype == torch.bfloat16
