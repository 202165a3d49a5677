"""torchmetrics per split. States are sums, so they reduce correctly across devices."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn
from torchmetrics import MeanMetric, Metric, MetricCollection


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


class WeightedMean(MeanMetric):
    """torchmetrics' weighted mean that keeps NaN visible. torchmetrics 1.9's MeanMetric replaces the
    weights with ones when ``nan_strategy="disable"`` (``_cast_and_nan_check_input``), so a
    token-weighted loss silently became a mean of batch means; the other strategies drop NaN values.
    tests/test_pins.py fails when torchmetrics keeps the weights itself and this class can go."""

    def __init__(self) -> None:
        super().__init__(nan_strategy="disable")

    def _cast_and_nan_check_input(self, x, weight=None):
        x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=self.dtype, device=self.device)
        if weight is None:
            weight = torch.ones_like(x)
        elif not isinstance(weight, torch.Tensor):
            weight = torch.as_tensor(weight, dtype=self.dtype, device=self.device)
        return x.to(self.dtype), weight.to(self.dtype)


def perplexity(values: dict[str, float]) -> dict[str, float]:
    return {"perplexity": math.exp(min(values["loss"], 50.0))}


class SplitMetrics(nn.Module):
    """One split's metrics: the mean loss, weighted by what it averages over (answer tokens, or
    examples), the task's own torchmetrics, and values derived from those (perplexity)."""

    def __init__(self, metrics: Optional[dict[str, Metric]] = None,
                 derived: Optional[Callable[[dict[str, float]], dict[str, float]]] = None):
        super().__init__()
        # float64 sums; a NaN loss stays NaN
        self.loss = WeightedMean().set_dtype(torch.float64)
        self.task = MetricCollection(metrics) if metrics else None
        self.derived = derived

    @property
    def names(self) -> list[str]:
        return ["loss", *(self.task.keys() if self.task is not None else [])]

    def update_loss(self, total: torch.Tensor, count: torch.Tensor | int) -> None:
        count = int(count)
        if count > 0:
            self.loss.update(total.detach().double() / count, weight=count)

    def compute(self) -> dict[str, float]:
        values = {"loss": float(self.loss.compute())}
        if self.task is not None:
            values.update({k: float(v) for k, v in self.task.compute().items()})
        if self.derived is not None:
            values.update(self.derived(values))
        return values

    def reset(self) -> None:
        self.loss.reset()
        if self.task is not None:
            self.task.reset()
