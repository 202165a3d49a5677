"""What a merge is checked against, measured once: the adapter model as trained (on a quantized
base, for QLoRA runs) and as it would be deployed unmerged in the export dtype."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path
from typing import Any, Optional

from peftlab.export.verify import Evaluation, Reference, compare, forward_ms, iter_logits, rows, score_split
from peftlab.models import load_backbone
from peftlab.models.quantized import device_map, quantization_config
from peftlab.tasks import make_task

TIMING = 8  # examples of the batch whose forward latency is measured, and of the float64 check
QUANTIZATION_SLACK = 0.02  # see quantization_gap


def head(batch: dict[str, Any], n: int) -> dict[str, Any]:
    return rows(batch, 0, n)


class RunModels:
    """The pieces of a run a merge works with: its task, data, and a loader of its adapter model."""

    def __init__(self, run_dir: Path, run, dtype: str, cache_dir: Optional[str], max_test_examples: Optional[int],
                 quantized: bool = False):
        from peftlab.data.datamodule import TaskDataModule

        self.run_dir, self.run, self.adapter = run_dir, run, run_dir / "adapter"
        self.cache_dir = cache_dir or run.paths.cache_dir
        data_cfg = run.data if max_test_examples is None else dataclasses.replace(
            run.data, max_eval_examples=max_test_examples)
        self.task = make_task(data_cfg)
        self.backbone = None
        self.model = self.adapter_model(dtype, quantized)
        self.data = TaskDataModule(self.task, self.backbone.tokenizer, seed=run.seed)

    def adapter_model(self, dtype: str, quantized: bool = False):
        """The run's adapter on its base in ``dtype`` (``quantized``: on the 8/4-bit base it trained on)."""
        import torch

        from peftlab.runs.adapters import load_adapter

        self.model = self.backbone = None  # one copy of the weights at a time
        gc.collect()
        torch.manual_seed(self.run.seed)  # a classification head not in the adapter is initialised the same
        precision = self.run.precision
        self.backbone = load_backbone(self.run.model, self.cache_dir, self.task, dtype,
                                      quantization_config(precision) if quantized else None,
                                      device_map(self.run.hardware))
        self.model = load_adapter(self.backbone.model, self.adapter, "run_dir").eval()
        return self.model


def measure_reference(r: RunModels, batches, dtype: str, adapter_test: Optional[Evaluation]) -> Reference:
    """The adapter model as it would be deployed unmerged, in the export dtype: its logits on
    ``batches``, its test predictions and metrics (``adapter_test`` when the caller has them), the
    same logits in float64 for fp32 exports, and its forward latency with the adapter on and off."""
    model, task = r.model, r.task
    ref = Reference(logits=list(iter_logits(model, task, batches)),
                    test=adapter_test or score_split(model, task, r.backbone.tokenizer, r.data.test_dataloader()))
    timing = head(batches[0], TIMING)  # the first chunk iter_logits ran: the model is warm for this shape
    ref.latency["adapter_unmerged_ms"] = forward_ms(model, timing, repeats=2, warm=True)
    with model.disable_adapter():
        ref.latency["base_ms"] = forward_ms(model, timing, repeats=2, warm=True)
    if dtype in ("float32", "float64"):  # the same logits in float64: what the merge changes, free of fp32 rounding
        ref.logits64 = list(iter_logits(model.double(), task, [timing]))
        model.float()  # fp32 -> fp64 -> fp32 is lossless
    return ref


def measure_quantized(r: RunModels, batches, adapter_test: Optional[Evaluation]):
    """The adapter on the quantized base it trained on (what the run tested), and that base's own
    logits with the adapter switched off."""
    model, task = r.model, r.task
    ref = Reference(logits=list(iter_logits(model, task, batches)),
                    test=adapter_test or score_split(model, task, r.backbone.tokenizer, r.data.test_dataloader()))
    with model.disable_adapter():
        base = list(iter_logits(model, task, batches))
    return ref, base


def quantization_gap(base_quantized, base_full) -> float:
    """The least top-1 agreement the merged model needs with the adapter on the quantized base.

    The QLoRA export merges into the full-precision base, so it differs from the adapter on the
    quantized base by whatever quantizing moved the base itself. That move is measured on the same
    positions, with the adapters off (quantized base vs full-precision base); the merged model may
    disagree with the quantized adapter model that much, plus QUANTIZATION_SLACK."""
    return compare(base_full, iter(base_quantized))["top1_agreement"] - QUANTIZATION_SLACK
