"""torchmetrics collections per task. States are sums, so they reduce correctly across devices."""

from __future__ import annotations

import math

import torch
from torch import nn
from torchmetrics import Metric


class TokenLoss(Metric):
    """Mean negative log-likelihood per answer token over a whole split (token-weighted)."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, tokens: torch.Tensor | int) -> None:
        self.nll += nll_sum.detach().double()
        self.tokens += int(tokens)

    def compute(self) -> torch.Tensor:
        return (self.nll / self.tokens.clamp(min=1)).float()


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


class CausalLMMetrics(nn.Module):
    """loss and perplexity of the answer tokens; exact match of greedy generations when asked."""

    def __init__(self, generate: bool):
        super().__init__()
        self.generate = generate
        self.loss = TokenLoss()
        self.exact_match = ExactMatch()

    def compute(self) -> dict[str, float]:
        loss = float(self.loss.compute())
        out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if self.generate:
            out["exact_match"] = float(self.exact_match.compute())
        return out

    def reset(self) -> None:
        self.loss.reset()
        self.exact_match.reset()


class ClassificationMetrics(nn.Module):
    """Mean cross-entropy per example, accuracy and macro-F1 over the split."""

    def __init__(self, num_classes: int):
        super().__init__()
        from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

        self.loss = TokenLoss()  # here one "token" per example
        self.accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.macro_f1 = MulticlassF1Score(num_classes=num_classes, average="macro")

    def compute(self) -> dict[str, float]:
        return {"loss": float(self.loss.compute()), "accuracy": float(self.accuracy.compute()),
                "macro_f1": float(self.macro_f1.compute())}

    def reset(self) -> None:
        for m in (self.loss, self.accuracy, self.macro_f1):
            m.reset()
