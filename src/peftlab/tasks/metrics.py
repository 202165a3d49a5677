"""torchmetrics per split. States are sums, so they reduce correctly across devices."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection, SumMetric


class ExactMatch(Metric):
    """Fraction of predictions equal to their reference after stripping surrounding whitespace."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: list[str], references: list[str]) -> None:
        self.correct += sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
        self.total += len(references)

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


def perplexity(values: dict[str, float]) -> dict[str, float]:
    return {"perplexity": math.exp(min(values["loss"], 50.0))}


class SplitMetrics(nn.Module):
    """One split's metrics: the mean loss, weighted by what it averages over (answer tokens, or
    examples), the task's own torchmetrics, and values derived from those (perplexity)."""

    def __init__(self, metrics: Optional[dict[str, Metric]] = None,
                 derived: Optional[Callable[[dict[str, float]], dict[str, float]]] = None):
        super().__init__()
        # the loss as two float64 sums (total, count), so that it is weighted by what it averages
        # over and reduces across devices; nan_strategy="disable" keeps a NaN loss visible
        self.loss_total = SumMetric(nan_strategy="disable").set_dtype(torch.float64)
        self.loss_count = SumMetric().set_dtype(torch.float64)
        self.task = MetricCollection(metrics) if metrics else None
        self.derived = derived

    @property
    def names(self) -> list[str]:
        return ["loss", *(self.task.keys() if self.task is not None else [])]

    def update_loss(self, total: torch.Tensor, count: torch.Tensor | int) -> None:
        count = int(count)
        if count > 0:
            self.loss_total.update(total.detach().double())
            self.loss_count.update(count)

    def compute(self) -> dict[str, float]:
        values = {"loss": float(self.loss_total.compute() / self.loss_count.compute().clamp(min=1))}
        if self.task is not None:
            values.update({k: float(v) for k, v in self.task.compute().items()})
        if self.derived is not None:
            values.update(self.derived(values))
        return values

    def reset(self) -> None:
        self.loss_total.reset()
        self.loss_count.reset()
        if self.task is not None:
            self.task.reset()
