"""8-bit / 4-bit bases loaded by bitsandbytes through ``from_pretrained`` (QLoRA: a frozen nf4
base with double quantization, trainable adapters in full precision). bitsandbytes has CPU
kernels too."""

from __future__ import annotations

import os
from typing import Any


def quantization_config(precision: Any) -> Any:
    """transformers' BitsAndBytesConfig for ``precision.quantize``, or None for a full-precision base."""
    if not precision.quantize:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if precision.quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[precision.compute_dtype]
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=precision.quantize,
                              bnb_4bit_use_double_quant=precision.double_quant, bnb_4bit_compute_dtype=compute)


def device_map(hardware: Any) -> Any:
    """Where a quantized base loads (bitsandbytes quantizes while loading onto the device): this
    process's GPU under CUDA, else the CPU."""
    import torch

    if hardware.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK") or 0)}
    return {"": "cpu"}


def keep_4bit_weights_trainable(model: Any) -> None:
    """bitsandbytes 0.50, on CPUs with AVX512-BF16, repacks a 4-bit layer's weight into a
    CPU-inference layout the first time the layer runs in eval mode without gradients, and keeps
    that layout: training after an evaluation (peftlab tests the untouched base first) then computes
    with a weight the training path misreads, and the loss does not fall (SmolLM2 nf4: 1.05 -> 1.25
    in 60 steps). Switching the repacking off keeps the weights in the layout both paths read.
    tests/test_pins.py fails when bitsandbytes no longer repacks, and this can go."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
