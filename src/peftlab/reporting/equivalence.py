"""Equivalence between groups of runs: two one-sided t tests (TOST) on the difference of a metric.

For every pair of groups, the difference (second minus first) of a metrics.json number is tested
against a margin ``m``: the two groups are *equivalent within ±m* when both one-sided tests reject
(the difference is above -m and below +m at level 0.05, so the 90% interval of the difference lies
inside ±m); *different* when they are not and the two-sided test rejects a zero difference at 0.05;
*not resolved* otherwise (too few seeds, or too much spread, to say either).

The test is paired by seed when both groups ran the same seeds (the difference of each seed's
runs, Student t with n-1 degrees of freedom), Welch's unequal-variance test otherwise
(reporting/differences.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from peftlab.reporting.differences import by_seed, difference, interval_cell, p_cell, signed
from peftlab.reporting.runs import Group

ALPHA = 0.05
VERDICTS = ("equivalent", "different", "not resolved")


@dataclass
class Tost:
    key: str  # the metrics.json number compared
    first: str  # the groups' settings
    second: str
    margin: float
    test: str  # "paired t (n seeds)" or "Welch t"
    n: tuple[int, int]
    difference: Optional[float]  # mean of second - first
    ci90: Optional[tuple[float, float]]  # the interval TOST's verdict reads
    df: Optional[float]
    p_tost: Optional[float]  # the larger of the two one-sided p-values
    p_difference: Optional[float]  # two-sided, zero difference
    verdict: str


def tost(first: Group, second: Group, key: str, margin: float) -> Tost:
    """TOST of ``key`` between two groups with equivalence margin ``margin`` (> 0)."""
    from scipy.stats import t

    a, b = by_seed(first, key), by_seed(second, key)
    n = (len(a), len(b))
    if min(n) < 2:
        return Tost(key, first.setting, second.setting, margin, "needs 2 runs a group", n, None, None, None, None,
                    None, "not resolved")
    found = difference(a, b)
    test, diff, se, df = found.test, found.mean, found.se, found.df
    if se == 0:  # every seed gave the same difference: no spread to test against
        p_tost = 0.0 if abs(diff) < margin else 1.0
    else:
        p_lower = float(t.sf((diff + margin) / se, df))  # H0: difference <= -margin
        p_upper = float(t.cdf((diff - margin) / se, df))  # H0: difference >= +margin
        p_tost = max(p_lower, p_upper)
    p_diff = found.p_two_sided()
    verdict = "equivalent" if p_tost < ALPHA else "different" if p_diff < ALPHA else "not resolved"
    return Tost(key, first.setting, second.setting, margin, test, n, diff, found.interval(1 - 2 * ALPHA), df, p_tost,
                p_diff, verdict)


def equivalence(groups: list[Group], margins: dict[str, float]) -> list[Tost]:
    """TOST for every pair of groups and every ``key: margin``."""
    return [tost(g, h, key, m) for key, m in margins.items()
            for i, g in enumerate(groups) for h in groups[i + 1:]]


def to_markdown(results: list[Tost]) -> str:
    lines = ["", "Equivalence (two one-sided t tests at 0.05: equivalent when the 90% interval of the "
             "difference lies inside ±margin; different when a zero difference is rejected at 0.05; "
             "otherwise not resolved)", "",
             "| metric | first | second | margin | test | difference (second − first) | 90% CI | p (TOST) "
             "| p (difference) | verdict |",
             "|---|---|---|---:|---|---:|---|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r.key} | {r.first} | {r.second} | ±{r.margin:g} | {r.test} | {signed(r.difference)} "
                     f"| {interval_cell(r.ci90)} | {p_cell(r.p_tost)} | {p_cell(r.p_difference)} | **{r.verdict}** |")
    return "\n".join(lines) + "\n"


def as_records(results: list[Tost]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
