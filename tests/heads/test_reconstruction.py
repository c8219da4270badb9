from __future__ import annotations

import torch

from heads.reconstruction import ReconstructionMetric
from support import make_batch


def test_ssim_is_one_for_identical_images_and_lower_for_noisy_ones():
    batch = make_batch(size=32, batch=2)
    same = ReconstructionMetric()
    same.update(batch.image.clone(), batch)
    result = same.compute()
    assert set(result) == {"psnr", "mse", "ssim"}
    assert abs(result["ssim"] - 1.0) < 1e-5 and result["mse"] == 0.0

    noisy = ReconstructionMetric()
    noisy.update((batch.image + 0.2 * torch.randn(batch.image.shape, generator=torch.Generator().manual_seed(0)))
                 .clamp(0, 1), batch)
    assert noisy.compute()["ssim"] < 0.9


def test_no_updates_give_no_numbers():
    assert ReconstructionMetric().compute() == {}
