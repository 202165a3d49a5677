"""The difference of one metrics.json number between two groups of runs, with its standard error:
paired by seed when both groups ran the same seeds (Student t on the per-seed differences, n-1
degrees of freedom), Welch's unequal-variance t otherwise. The equivalence tests build on it."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Optional

from peftlab.reporting.runs import Group
from peftlab.runs.metrics import metric_at


def by_seed(group: Group, key: str) -> dict[Any, float]:
    """Each finished run's number, by seed (a NaN or infinity is not a number to test)."""
    return {r.seed: v for r in group.finished if (v := metric_at(r.metrics, key)) is not None and math.isfinite(v)}


@dataclass
class Difference:
    test: str  # "paired t (n seeds)" or "Welch t"
    mean: float  # second - first
    se: float  # its standard error
    df: float  # the t distribution's degrees of freedom
    spread: float  # the standard deviation an effect size divides by (paired: of the differences)

    def p_two_sided(self) -> float:
        """The two-sided p-value of a zero difference (no spread: 0 for a difference, 1 for none)."""
        from scipy.stats import t

        if self.se == 0:
            return 0.0 if self.mean else 1.0
        return float(2 * t.sf(abs(self.mean) / self.se, self.df))

    def interval(self, level: float) -> tuple[float, float]:
        """The ``level`` (0.90, 0.95) two-sided t interval of the difference."""
        from scipy.stats import t

        half = float(t.ppf(1 - (1 - level) / 2, self.df)) * self.se if self.se > 0 else 0.0
        return self.mean - half, self.mean + half


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


# the tables' cells: a signed number, an interval, a p-value; "—" where there is none
def signed(value: Optional[float], digits: int = 4) -> str:
    return "—" if value is None else f"{value:+.{digits}f}"


def interval_cell(ci: Optional[tuple[float, float]], digits: int = 4) -> str:
    return "—" if ci is None else f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def p_cell(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.3g}"
