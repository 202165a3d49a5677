"""Equivalence between groups of runs: two one-sided t tests (TOST) on the difference of a metric.

For every pair of groups, the difference (second minus first) of a metrics.json number is tested
against a margin ``m``: the two groups are *equivalent within ±m* when both one-sided tests reject
(the difference is above -m and below +m at level 0.05, so the 90% interval of the difference lies
inside ±m); *different* when they are not and the two-sided test rejects a zero difference at 0.05;
*not resolved* otherwise (too few seeds, or too much spread, to say either). Over several pairs, both
p-values are Holm-corrected over the pairs of each metric (as the pairwise comparisons are), so that
neither verdict is claimed for some pair of a family by chance.

The test is paired by seed when both groups ran the same seeds (the difference of each seed's
runs, Student t with n-1 degrees of freedom), Welch's unequal-variance test otherwise
(reporting/differences.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from peftlab.reporting.compare import holm
from peftlab.reporting.differences import by_seed, difference, interval_cell, p_cell, signed
from peftlab.reporting.escape import md
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
    verdict: str  # read from the Holm-corrected p-values over the pairs of this metric
    # whether the margin was stated before the runs (a protocol's); a margin chosen after seeing the
    # results makes "equivalent" a description, not a finding: the table says "post hoc"
    stated_before: bool = False
    p_tost_holm: Optional[float] = None
    p_difference_holm: Optional[float] = None


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


def equivalence(groups: list[Group], margins: dict[str, float],
                stated: Optional[dict[str, float]] = None) -> list[Tost]:
    """TOST for every pair of groups and every ``key: margin``; ``stated``: the margins set before the runs."""
    results = []
    for key, m in margins.items():
        family = [tost(g, h, key, m) for i, g in enumerate(groups) for h in groups[i + 1:]]
        for r, p_tost, p_diff in zip(family, holm([r.p_tost for r in family]), holm([r.p_difference for r in family]),
                                     strict=True):
            r.p_tost_holm, r.p_difference_holm = p_tost, p_diff
            r.verdict = "equivalent" if p_tost is not None and p_tost < ALPHA else "different" if (
                p_diff is not None and p_diff < ALPHA) else "not resolved"
            r.stated_before = (stated or {}).get(key) == m
        results += family
    return results


def to_markdown(results: list[Tost]) -> str:
    """The TOST table. A margin given to the report (after the runs) marks its verdict "post hoc"."""
    lines = ["", "Equivalence (two one-sided t tests at 0.05: equivalent when the 90% interval of the "
             "difference lies inside ±margin; different when a zero difference is rejected at 0.05; "
             "otherwise not resolved; both p-values Holm-corrected over the pairs of each metric). Only *equivalent* "
             "at a margin set before the runs says that two groups perform alike; at a margin given after them the "
             "verdict is marked post hoc.", "",
             "| metric | first | second | margin | margin set | test | difference (second − first) | 90% CI "
             "| p (TOST, Holm) | p (difference, Holm) | verdict |",
             "|---|---|---|---:|---|---|---:|---|---:|---:|---|"]
    for r in results:
        when = "before the runs" if r.stated_before else "after the runs"
        verdict = r.verdict + ("" if r.stated_before or r.verdict != "equivalent" else " (post hoc)")
        lines.append(f"| {md(r.key)} | {md(r.first)} | {md(r.second)} | ±{r.margin:g} | {when} | {r.test} "
                     f"| {signed(r.difference)} | {interval_cell(r.ci90)} | {p_cell(r.p_tost_holm)} "
                     f"| {p_cell(r.p_difference_holm)} | **{verdict}** |")
    return "\n".join(lines) + "\n"


def as_records(results: list[Tost]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
