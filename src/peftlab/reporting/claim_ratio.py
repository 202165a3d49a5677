"""The ratio of two groups' best settings (LoRA's best learning rate over full fine-tuning's), each
found by a search on validation (hydra/sweeper=tune_then_test), with an interval from the search
itself; reporting/claims.py holds the other verdict rules.

Where each group's best lies: the search scored every setting of a grid at the search seeds. A
setting is *not separable* from the best when the 95% paired-t interval (over the seeds both ran) of
the best's lead over it holds 0; with one search seed there is no spread, and every setting that
finished is not separable. Assuming the validation score is unimodal in the setting, the optimum
then lies strictly between the grid points just outside the not-separable ones: the bracket. Where
the not-separable settings reach the end of the grid, the bracket is open on that side (0 or
infinity): the grid did not find the optimum's edge. The ratio's interval is the quotient of the two
brackets, [low_1 / high_2, high_1 / low_2]; the point is the ratio of the settings the protocol chose.

Reproduced when that interval lies within [expected / margin, expected * margin]; not reproduced
when it lies wholly outside; inconclusive otherwise, with the search seeds per setting at which
each not-separable setting would separate at its observed lead and spread (none where it ties the
best), and the grid's end to extend where the bracket is open.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Optional

from peftlab.reporting.claims import INCONCLUSIVE, MAX_N, NOT_REPRODUCED, REPRODUCED, Judged


@dataclass
class Search:
    """One group's search: the grid's values, each value's score by seed (None: a failed job), the
    chosen value, and whether a higher score is better."""

    name: str
    scores: dict[float, dict[Any, Optional[float]]]
    chosen: float
    greater_is_better: bool = True

    @property
    def grid(self) -> list[float]:
        return sorted(self.scores)

    def lead(self, value: float) -> list[float]:
        """The best's lead over ``value`` at each seed both finished (> 0: the best scored better)."""
        best, other = self.scores[self.chosen], self.scores[value]
        sign = 1.0 if self.greater_is_better else -1.0
        return [sign * (best[s] - other[s]) for s in best if s in other and best[s] is not None
                and other[s] is not None]

    def finished(self, value: float) -> bool:
        return bool(self.scores[value]) and all(v is not None for v in self.scores[value].values())

    def not_separable(self) -> list[float]:
        """The values whose score is not separable from the best's (the best included)."""
        return [v for v in self.grid if v == self.chosen or (self.finished(v) and not _separated(self.lead(v)))]

    def bracket(self) -> tuple[float, float]:
        """Where the optimum lies: between the grid points just outside the not-separable values."""
        grid, keep = self.grid, self.not_separable()
        low, high = grid.index(min(keep)), grid.index(max(keep))
        return (grid[low - 1] if low > 0 else 0.0), (grid[high + 1] if high + 1 < len(grid) else math.inf)

    def tightest(self) -> tuple[float, float]:
        """The bracket if every other value separated from the best: its two neighbours."""
        grid, i = self.grid, self.grid.index(self.chosen)
        return (grid[i - 1] if i > 0 else 0.0), (grid[i + 1] if i + 1 < len(grid) else math.inf)

    def seeds_to_separate(self) -> Optional[int]:
        """The search seeds per setting at which every not-separable value separates from the best
        (None: one ties it, or there is no spread yet to plan with)."""
        needed = [2]
        for v in self.not_separable():
            if v == self.chosen:
                continue
            lead = self.lead(v)
            if len(lead) < 2 or statistics.fmean(lead) <= 0:
                return None
            needed.append(_seeds(statistics.fmean(lead), statistics.stdev(lead)))
        return None if any(n is None for n in needed) else max(needed)


def _separated(lead: list[float]) -> bool:
    """Whether the best's lead is shown at 0.05 (two-sided paired t over the seeds)."""
    if len(lead) < 2:
        return False
    from peftlab.reporting.intervals import seeds_interval

    found = seeds_interval(lead)
    return found.low is not None and found.low > 0


def _seeds(lead: float, sd: float) -> Optional[int]:
    if sd == 0:
        return 2
    from peftlab.reporting.intervals import t_quantile

    return next((n for n in range(2, MAX_N + 1) if t_quantile(n - 1) * sd / math.sqrt(n) < lead), None)


def _quotient(a: float, b: float) -> float:
    if b == 0:
        return math.inf
    return 0.0 if math.isinf(b) else a / b


def ratio_interval(first: Search, second: Search) -> tuple[float, tuple[float, float]]:
    """(the chosen settings' ratio, the interval of the optima's ratio)."""
    (lo1, hi1), (lo2, hi2) = first.bracket(), second.bracket()
    return first.chosen / second.chosen, (_quotient(lo1, hi2), _quotient(hi1, lo2))


def judge_ratio(first: Search, second: Search, expected: float, margin: float) -> Judged:
    point, (low, high) = ratio_interval(first, second)
    band = (expected / margin, expected * margin)
    where = f"[{band[0]:.3g}, {band[1]:.3g}]"
    p = {"ratio": point}
    if band[0] <= low and high <= band[1]:
        return Judged(REPRODUCED, f"the ratio's interval lies within {where}", (low, high), None, p)
    if high < band[0] or low > band[1]:
        return Judged(NOT_REPRODUCED, f"the ratio's interval lies outside {where}", (low, high), None, p)
    notes = [f"extend {s.name}'s grid {side} {edge:g}" for s in (first, second)
             for side, edge, open_ in (("below", s.grid[0], s.bracket()[0] == 0),
                                       ("above", s.grid[-1], math.isinf(s.bracket()[1]))) if open_]
    (lo1, hi1), (lo2, hi2) = first.tightest(), second.tightest()
    best = _quotient(lo1, hi2), _quotient(hi1, lo2)
    if notes or not (band[0] <= best[0] and best[1] <= band[1]):
        what = "; ".join(notes) if notes else (
            "a finer grid around the best settings (with every other setting separated, the interval would still be "
            f"[{best[0]:.3g}, {best[1]:.3g}])")
        return Judged(INCONCLUSIVE, f"the ratio's interval crosses {where}", (low, high), None, p, None,
                      unit="search seeds per setting", note=f"cannot at this grid: {what}")
    needed = [first.seeds_to_separate(), second.seeds_to_separate()]
    seeds = None if any(n is None for n in needed) else max(needed)
    return Judged(INCONCLUSIVE, f"the ratio's interval crosses {where}", (low, high), None, p, seeds,
                  unit="search seeds per setting",
                  note="" if seeds is not None else "cannot: a setting ties the best (a finer grid may separate them)")
