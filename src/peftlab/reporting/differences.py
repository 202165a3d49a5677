"""The difference of one metrics.json number between two groups of runs, with its standard error:
paired by seed when both groups ran the same seeds (Student t on the per-seed differences, n-1
degrees of freedom), Welch's unequal-variance t otherwise. The equivalence tests build on it."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from peftlab.reporting.runs import Group
from peftlab.runs.metrics import metric_at


def by_seed(group: Group, key: str) -> dict[Any, float]:
    """Each finished run's number, by seed."""
    return {r.seed: v for r in group.finished if (v := metric_at(r.metrics, key)) is not None}


@dataclass
class Difference:
    test: str  # "paired t (n seeds)" or "Welch t"
    mean: float  # second - first
    se: float  # its standard error
    df: float  # the t distribution's degrees of freedom
    spread: float  # the standard deviation an effect size divides by (paired: of the differences)


def difference(first: dict[Any, float], second: dict[Any, float]) -> Difference:
    """``second - first`` for two groups' numbers by seed, each with at least 2 runs."""
    if set(first) == set(second):  # the same seeds: each seed's difference
        d = [second[s] - first[s] for s in first]
        sd = statistics.stdev(d)
        return Difference(f"paired t ({len(d)} seeds)", statistics.fmean(d), sd / math.sqrt(len(d)), len(d) - 1, sd)
    a, b = list(first.values()), list(second.values())
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else float(len(a) + len(b) - 2)
    spread = math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2)
    return Difference("Welch t", statistics.fmean(b) - statistics.fmean(a), se, df, spread)
