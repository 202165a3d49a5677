"""Pairwise comparisons between groups of runs on one metric, with Holm's correction over the family
of pairs, effect sizes with their intervals, and a compact letter display.

Each pair's difference (second minus first) is tested two-sided twice where it can be:

- over **seeds**: paired by seed (Student t on the per-seed differences, n-1 degrees of freedom)
  when both groups ran the same seeds, Welch's unequal-variance t test otherwise; it treats the test
  items as fixed;
- over **seeds and items** (item-paired): when both groups ran the same seeds and answered the same
  test items (the primary metric a mean over them, ``test_predictions.jsonl``), the seeds x items
  table of differences, its interval from the crossed mean squares (reporting/intervals.py).

Holm's step-down correction keeps the chance of any false "different" in each family at 0.05. The
effect size is Cohen's d (paired: d_z) with its exact noncentral-t interval, only from 5 or more
seeds. Not separated is not the same: only an equivalence test (TOST, reporting/equivalence.py) at
a margin set before the runs says that two groups perform alike.

The letters: groups sorted best first; two groups share a letter unless their pair is separated
(Holm-adjusted p < 0.05: the item-paired tests where every pair has one, the seeds tests otherwise),
by the insert-and-absorb algorithm (Piepho 2004).
"""

from __future__ import annotations

import statistics
import string
from dataclasses import asdict, dataclass
from typing import Any, Optional

from peftlab.reporting.differences import by_seed, difference, interval_cell, p_cell, signed
from peftlab.reporting.escape import md
from peftlab.reporting.intervals import MIN_EFFECT_UNITS, cohens_d, crossed_interval
from peftlab.reporting.items import ItemTable, paired_table
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
    effect: Optional[float]  # Cohen's d (paired: d_z); None from fewer than 5 seeds
    effect_ci95: Optional[tuple[float, float]]
    separated: bool = False  # p_holm < 0.05
    effect_note: str = ""
    items_test: str = ""  # "seeds x items (s seeds, i items)", or why there is none
    items_ci95: Optional[tuple[float, float]] = None
    items_p: Optional[float] = None
    items_p_holm: Optional[float] = None
    items_separated: bool = False


def pair_test(first: Group, second: Group, key: str, tables: Optional[dict[str, Optional[ItemTable]]] = None) -> Pair:
    """The two-sided tests of one pair, uncorrected; ``tables``: each group's seeds x items table."""
    a, b = by_seed(first, key), by_seed(second, key)
    n = (len(a), len(b))
    if min(n) < 2:
        return Pair(key, first.setting, second.setting, "needs 2 runs a group", n, None, None, None, None, None, None,
                    items_test="needs 2 runs a group")
    d = difference(a, b)
    paired = d.test.startswith("paired")
    seeds = sorted(a)
    effect = cohens_d([a[s] for s in seeds], [b[s] for s in seeds], True) if paired else \
        cohens_d(list(a.values()), list(b.values()), False)
    pair = Pair(key, first.setting, second.setting, d.test, n, d.mean, d.interval(1 - ALPHA), d.p_two_sided(), None,
                effect.d, effect.ci, effect_note=effect.note)
    table = paired_table((tables or {}).get(first.setting), (tables or {}).get(second.setting))
    if table is None:
        pair.items_test = "needs both groups' answers to the same items at the same seeds"
    else:
        found = crossed_interval(table)
        pair.items_test = f"seeds x items ({len(table)} seeds, {len(table[0])} items)"
        pair.items_ci95 = None if found.half is None else (found.low, found.high)
        pair.items_p = found.p_zero()
    return pair


def holm(pvalues: list[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjusted p-values (None stays None; it is not counted in the family)."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m, out, running = len(tested), [None] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def compare(groups: list[Group], key: str, tables: Optional[dict[str, Optional[ItemTable]]] = None) -> list[Pair]:
    """Every pair of groups tested on ``key``, each family (seeds, seeds and items) Holm-corrected."""
    pairs = [pair_test(g, h, key, tables) for i, g in enumerate(groups) for h in groups[i + 1:]]
    for pair, adjusted in zip(pairs, holm([p.p for p in pairs]), strict=True):
        pair.p_holm = adjusted
        pair.separated = adjusted is not None and adjusted < ALPHA
    for pair, adjusted in zip(pairs, holm([p.items_p for p in pairs]), strict=True):
        pair.items_p_holm = adjusted
        pair.items_separated = adjusted is not None and adjusted < ALPHA
    return pairs


def by_items(pairs: list[Pair]) -> bool:
    """Whether the letters read the item-paired tests: every pair with a seeds test has one too."""
    tested = [p for p in pairs if p.p is not None]
    return bool(tested) and all(p.items_p is not None for p in tested)


def letters(groups: list[Group], pairs: list[Pair], key: str, greater_is_better: bool) -> dict[str, str]:
    """The compact letter display: setting -> letters; groups that share a letter are not separated.
    A group without a number gets no letter."""
    means = {g.setting: statistics.fmean(v.values()) for g in groups if (v := by_seed(g, key))}
    order = sorted(means, key=lambda s: means[s], reverse=greater_is_better)
    columns: list[set[str]] = [set(order)] if order else []
    items = by_items(pairs)
    for pair in pairs:
        if not (pair.items_separated if items else pair.separated):
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
    items = by_items(pairs)
    family = sum(p.p is not None for p in pairs)
    lines = ["", f"Pairwise comparisons of test {md(metric)}, two-sided, Holm's correction over each family of "
             f"{family} pairs: over seeds (paired t where the groups ran the same seeds, Welch's otherwise; the test "
             "items fixed) and over seeds and items (the item-paired differences, where the groups answered the same "
             f"items at the same seeds). Cohen's d only from {MIN_EFFECT_UNITS} or more seeds, with its exact "
             "(noncentral t) 95% interval. Letters and *separated* read the "
             + ("item-paired tests." if items else "seeds tests.")
             + " A pair that is not separated is not shown alike: only an equivalence test at a margin set before "
             "the runs says that.", "",
             "| first | second | test | difference (second − first) | 95% CI (seeds) | p (Holm) "
             "| 95% CI (seeds + items) | p items (Holm) | Cohen's d [95% CI] | separated |",
             "|---|---|---|---:|---|---:|---|---:|---|---|"]
    for r in pairs:
        effect = "—" if r.effect is None else f"{r.effect:+.2f} {interval_cell(r.effect_ci95, 2)}"
        separated = r.items_separated if items else r.separated
        lines.append(f"| {md(r.first)} | {md(r.second)} | {r.test} | {signed(r.difference)} | {interval_cell(r.ci95)} "
                     f"| {p_cell(r.p_holm)} | {interval_cell(r.items_ci95)} | {p_cell(r.items_p_holm)} | {effect} "
                     f"| {'**yes**' if separated else 'no'} |")
    return "\n".join(lines) + "\n"


def as_records(pairs: list[Pair]) -> list[dict[str, Any]]:
    return [asdict(p) for p in pairs]
