"""Precision: Lightning's precision flag, with ``precision=auto`` resolved for the device. (A
quantized base is a way of loading the model: peftlab/models/quantized.py.)"""

from __future__ import annotations

from typing import Any


def trainer_precision(precision: Any, hardware: Any) -> str:
    """``precision.trainer``; ``auto``: bf16-mixed on a CUDA device with bf16, fp32 elsewhere
    (bf16 autocast is slower than fp32 on CPUs without bf16 units)."""
    if precision.trainer != "auto":
        return precision.trainer
    if hardware.accelerator in ("gpu", "cuda", "auto"):
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
    return "32-true"
