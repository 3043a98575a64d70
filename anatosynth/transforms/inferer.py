"""Sliding-window inference: a network's class probabilities over a whole canonical image.

Used by fine-tuning (validation Dice) and by ``anatosynth evaluate`` (predictions on held-out scans), so
both score a network the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["sliding_probs"]


def sliding_probs(model: torch.nn.Module, image: np.ndarray, patch: Sequence[int], overlap: float = 0.5,
                  sw_batch: int = 1, progress: bool = False) -> torch.Tensor:
    """Softmax probabilities (C, X, Y, Z) of ``model`` over a whole canonical image.

    Uses MONAI's ``sliding_window_inference`` with Gaussian blending; images smaller than the patch are
    padded by MONAI and cropped back. On CUDA the network runs under bf16 autocast and its logits are
    blended in fp32; the image goes to the GPU from pinned memory.
    """
    import torch
    from monai.inferers import sliding_window_inference

    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    x = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)[None, None]
    x = x.pin_memory().to(device, non_blocking=True) if cuda else x.to(device)

    def predict(window: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
            return model(window).float()

    with torch.no_grad():
        logits = sliding_window_inference(x, tuple(int(p) for p in patch), int(sw_batch), predict if cuda else model,
                                          overlap=float(overlap), mode="gaussian", progress=progress)
        logits = logits.as_tensor() if hasattr(logits, "as_tensor") else logits
        return torch.softmax(logits[0].float(), dim=0).cpu()
