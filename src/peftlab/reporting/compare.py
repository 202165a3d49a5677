"""Pairwise comparisons between groups of runs on one metric, with Holm's correction over the family
of pairs, effect sizes with their intervals, and a compact letter display.

Each pair's difference (second minus first) is tested two-sided: paired by seed (Student t on the
per-seed differences, n-1 degrees of freedom) when both groups ran the same seeds, Welch's
unequal-variance t test otherwise. The effect size is Cohen's d (paired: d_z, the mean difference
over the standard deviation of the differences; Welch: the difference over the root mean square of
the two standard deviations), its 95% interval from the normal approximation of its standard error.
Holm's step-down correction keeps the chance of any false "different" in the family at 0.05.

The letters: groups sorted best first; two groups share a letter unless their pair is separated
(Holm-adjusted p < 0.05), by the insert-and-absorb algorithm (Piepho 2004).
"""

from __future__ import annotations

import math
import statistics
import string
from dataclasses import asdict, dataclass
from typing import Any, Optional

from peftlab.reporting.differences import by_seed, difference, interval_cell, p_cell, signed
from peftlab.reporting.runs import Group

ALPHA = 0.05


@dataclass
class Pair:
    key: str
    first: str
    second: str
    test: str  # "paired t (n seeds)", "Welch t", or why there is none
    n: tuple[int, int]
    difference: Optional[float]  # mean of second - first
    ci95: Optional[tuple[float, float]]
    p: Optional[float]  # two-sided, uncorrected
    p_holm: Optional[float]
    effect: Optional[float]  # Cohen's d (paired: d_z)
    effect_ci95: Optional[tuple[float, float]]
    separated: bool = False  # p_holm < 0.05


def pair_test(first: Group, second: Group, key: str) -> Pair:
    """The two-sided test of one pair, uncorrected."""
    from scipy.stats import norm

    a, b = by_seed(first, key), by_seed(second, key)
    n = (len(a), len(b))
    if min(n) < 2:
        return Pair(key, first.setting, second.setting, "needs 2 runs a group", n, None, None, None, None, None, None)
    d = difference(a, b)
    p, ci = d.p_two_sided(), d.interval(1 - ALPHA)
    effect = d.mean / d.spread if d.spread > 0 else None
    # the standard error of d (paired: d_z over n seeds; Welch: two groups of n[0] and n[1] runs)
    if d.test.startswith("paired"):
        effect_se = math.sqrt(1 / n[0] + (effect or 0) ** 2 / (2 * n[0]))
    else:
        effect_se = math.sqrt((n[0] + n[1]) / (n[0] * n[1]) + (effect or 0) ** 2 / (2 * (n[0] + n[1])))
    z = float(norm.ppf(1 - ALPHA / 2))
    effect_ci = None if effect is None else (effect - z * effect_se, effect + z * effect_se)
    return Pair(key, first.setting, second.setting, d.test, n, d.mean, ci, p, None, effect, effect_ci)


def holm(pvalues: list[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjusted p-values (None stays None; it is not counted in the family)."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m, out, running = len(tested), [None] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def compare(groups: list[Group], key: str) -> list[Pair]:
    """Every pair of groups tested on ``key``, Holm-corrected over the family of pairs."""
    pairs = [pair_test(g, h, key) for i, g in enumerate(groups) for h in groups[i + 1:]]
    for pair, adjusted in zip(pairs, holm([p.p for p in pairs]), strict=True):
        pair.p_holm = adjusted
        pair.separated = adjusted is not None and adjusted < ALPHA
    return pairs


def letters(groups: list[Group], pairs: list[Pair], key: str, greater_is_better: bool) -> dict[str, str]:
    """The compact letter display: setting -> letters; groups that share a letter are not separated.
    A group without a number gets no letter."""
    means = {g.setting: statistics.fmean(v.values()) for g in groups if (v := by_seed(g, key))}
    order = sorted(means, key=lambda s: means[s], reverse=greater_is_better)
    columns: list[set[str]] = [set(order)] if order else []
    for pair in pairs:
        if not pair.separated:
            continue
        split: list[set[str]] = []
        for col in columns:  # insert: a column holding both is split into one without each
            split += [col - {pair.first}, col - {pair.second}] if {pair.first, pair.second} <= col else [col]
        # absorb: a column inside another says nothing more
        columns = [c for i, c in enumerate(split) if c and not any(
            c < o or (c == o and j < i) for j, o in enumerate(split) if j != i)]
    rank = {s: i for i, s in enumerate(order)}
    columns.sort(key=lambda c: min(rank[s] for s in c))
    names = string.ascii_lowercase + string.ascii_uppercase
    return {s: "".join(names[i] for i, c in enumerate(columns) if s in c) for s in order}


def to_markdown(pairs: list[Pair], metric: str) -> str:
    lines = ["", f"Pairwise comparisons of test {metric} (two-sided t tests, paired by seed where the groups ran "
             "the same seeds, Welch's otherwise; Holm's correction over the family of "
             f"{sum(p.p is not None for p in pairs)} pairs; Cohen's d with a normal-approximation 95% interval)", "",
             "| first | second | test | difference (second − first) | 95% CI | p | p (Holm) | Cohen's d [95% CI] "
             "| separated |",
             "|---|---|---|---:|---|---:|---:|---|---|"]
    for r in pairs:
        effect = "—" if r.effect is None else f"{r.effect:+.2f} {interval_cell(r.effect_ci95, 2)}"
        lines.append(f"| {r.first} | {r.second} | {r.test} | {signed(r.difference)} | {interval_cell(r.ci95)} "
                     f"| {p_cell(r.p)} | {p_cell(r.p_holm)} | {effect} | {'**yes**' if r.separated else 'no'} |")
    return "\n".join(lines) + "\n"


def as_records(pairs: list[Pair]) -> list[dict[str, Any]]:
    return [asdict(p) for p in pairs]
