"""A claim judged on runs: its selectors find the groups, each comparison becomes an estimate, and
the rules of reporting/claims.py (reporting/claim_ratio.py for a ratio) give the verdicts.

*Matched gain* (``matched: {by: gain.exact_match, within: w}``): each selector names a family of
groups (a method across learning rates and ranks). Each family's learning-forgetting front is the
set of its groups no other group of it beats on both the gain (higher) and the metric (per the
claim's direction); each group on the first family's front is paired with the group on the second's
front whose mean gain is nearest, when the two means lie within ``w`` of each other. Each pair is
one comparison of the metric. ``gain.<m>`` is test.<m> minus zero_shot.<m> of the run.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional

from peftlab.config.claims import parts
from peftlab.errors import ConfigError
from peftlab.reporting.claim_ratio import Search, judge_ratio
from peftlab.reporting.claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Estimate,
    Judged,
    combine,
    correlation,
    judge_better,
    judge_correlated,
    judge_equivalent,
    judge_not_worse,
)
from peftlab.reporting.differences import difference
from peftlab.reporting.runs import Group, Run
from peftlab.runs.metrics import metric_at

JUDGES = {"equivalent": judge_equivalent, "better": judge_better, "not_worse": judge_not_worse}


def value(run: Run, key: str) -> Optional[float]:
    """A run's number at a dotted metrics.json key; ``gain.<m>``: test.<m> minus zero_shot.<m>."""
    m = run.metrics or {}
    if key.startswith("gain."):
        after, before = metric_at(m, f"test.{key[5:]}"), metric_at(m, f"zero_shot.{key[5:]}")
        return None if after is None or before is None else after - before
    return metric_at(m, key)


def by_seed(group: Group, key: str) -> dict[Any, float]:
    return {r.seed: v for r in group.finished if (v := value(r, key)) is not None and math.isfinite(v)}


def mean(group: Group, key: str) -> Optional[float]:
    values = list(by_seed(group, key).values())
    return statistics.fmean(values) if values else None


def estimate(first: Group, second: Group, key: str) -> Optional[Estimate]:
    """first - second (paired by seed where both ran the same seeds); None under 2 runs a group."""
    a, b = by_seed(first, key), by_seed(second, key)
    if min(len(a), len(b)) < 2:
        return None
    d = difference(b, a)  # difference(x, y) is y - x
    return Estimate(d.mean, d.se, d.df, d.spread, d.test.startswith("paired"), (len(a), len(b)))


def _norm(text: str) -> str:
    return re.sub(r"[\s'\"]", "", str(text))


def matches(group: Group, selector: list[str]) -> bool:
    """Each term is one of the group's overrides, or the value every run of it records at that key."""
    settings = {_norm(s) for r in group.runs for s in r.settings}
    for term in selector:
        key, want = (_norm(x) for x in term.split("=", 1))
        recorded = [_lookup(r.metrics, key) for r in group.finished]
        if f"{key}={want}" not in settings and not (recorded and all(v == want for v in recorded)):
            return False
    return True


def _lookup(metrics: Any, dotted: str) -> Optional[str]:
    value_ = metrics
    for part in dotted.split("."):
        value_ = value_.get(part) if isinstance(value_, dict) else None
    return None if value_ is None or isinstance(value_, (dict, list)) else _norm(value_)


@dataclass
class Comparison:
    first: str
    second: str
    metric: str
    n: tuple[int, int]
    means: tuple[Optional[float], Optional[float]]
    judged: Judged
    difference: Optional[float] = None
    params: tuple[Optional[float], Optional[float]] = (None, None)
    gains: tuple[Optional[float], Optional[float]] = (None, None)  # matched comparisons: each group's mean gain


@dataclass
class PartResult:
    """One part of a claim, judged."""

    where: str  # claim, claim.also[0], ...
    part: dict[str, Any]
    comparisons: list[Comparison] = field(default_factory=list)
    judged: list[Judged] = field(default_factory=list)
    correlation: Optional[dict[str, Any]] = None
    points: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # what the figure plots
    verdict: str = INCONCLUSIVE
    needed: Optional[int] = None
    resolve: str = ""


def judge_claim(claim: dict[str, Any], groups: list[Group], runs: list[Run], records: list[Any]) -> list[PartResult]:
    """Every part of ``claim`` judged on the report's groups, finished runs and protocol records."""
    found = []
    for i, part in enumerate(parts(claim)):
        result = PartResult("claim" if i == 0 else f"claim.also[{i - 1}]", part)
        kind = part["kind"]
        if kind == "correlated":
            _correlated(result, runs)
        elif kind == "ratio":
            _ratio(result, records)
        else:
            _compared(result, groups)
        result.verdict, result.needed, result.resolve = combine(result.judged)
        found.append(result)
    return found


def overall(results: list[PartResult]) -> tuple[str, str]:
    """The claim's verdict over its parts (each must hold), and what would resolve it."""
    verdicts = [r.verdict for r in results]
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED, ""
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED, ""
    return INCONCLUSIVE, "; ".join(f"{r.where}: {r.resolve}" if len(results) > 1 else r.resolve
                                   for r in results if r.verdict == INCONCLUSIVE)


def _correlated(result: PartResult, runs: list[Run]) -> None:
    x_key, y_key = result.part["against"], result.part["metric"]
    points = [(x, y, r) for r in runs if r.status == "finished"
              if (x := value(r, x_key)) is not None and (y := value(r, y_key)) is not None
              and math.isfinite(x) and math.isfinite(y)]
    result.correlation = correlation([p[0] for p in points], [p[1] for p in points])
    result.points = {"runs": [{"x": x, "y": y, "setting": r.setting} for x, y, r in points]}
    result.judged = [judge_correlated(result.correlation, float(result.part["margin"]))]


def _ratio(result: PartResult, records: list[Any]) -> None:
    part, where = result.part, result.where
    first, second = (_search(records, selector, part["metric"], f"{where}.comparisons[0][{j}]")
                     for j, selector in enumerate(part["comparisons"][0]))
    if first is None or second is None:
        judged = Judged(INCONCLUSIVE, "no finished search (tune_then_test protocol.json) for a group", None, None, {},
                        None, unit="search seeds per setting", note="cannot: run the search of both groups")
    else:
        judged = judge_ratio(first, second, float(part["expected"]), float(part["margin"]))
        result.points = {s.name: [{"x": v, "y": (statistics.fmean(x for x in s.scores[v].values() if x is not None)
                                                  if any(x is not None for x in s.scores[v].values()) else None),
                                   "chosen": v == s.chosen} for v in s.grid] for s in (first, second)}
    result.judged = [judged]
    seeds = tuple(len(s.scores[s.chosen]) if s else 0 for s in (first, second))
    result.comparisons = [Comparison(" ".join(part["comparisons"][0][0]), " ".join(part["comparisons"][0][1]),
                                     part["metric"], seeds, (first and first.chosen, second and second.chosen),
                                     judged, judged.p.get("ratio"))]


def _search(records: list[Any], selector: list[str], key: str, where: str) -> Optional[Search]:
    """The one search group of the records that ``selector`` names, as a Search over ``key``."""
    hits = [(r, g) for r in records for g in r.data["groups"]
            if all(_norm(t) in {_norm(o) for o in g.get("overrides") or []} for t in selector)]
    if len(hits) > 1:
        raise ConfigError(f"{where}: {selector} matches {len(hits)} search groups "
                          f"({', '.join(g['group'] for _, g in hits)}); it must name one")
    if not hits or not hits[0][1].get("chosen"):
        return None
    record, g = hits[0]

    def at(setting: list[str]) -> Optional[float]:
        found = [o.split("=", 1)[1] for o in setting if o.split("=", 1)[0] == key]
        return float(found[0]) if found else None

    scores: dict[float, dict[Any, Optional[float]]] = {at(s): {} for s in g["settings"] if at(s) is not None}
    for job in g["search"]:
        if at(job["setting"]) is not None:
            scores[at(job["setting"])][job["seed"]] = job["value"]
    if not scores or at(g["chosen"]) is None:
        raise ConfigError(f"{where}: the search of {g['group']} did not vary {key} (its settings: {g['settings']})")
    return Search(g["group"], scores, at(g["chosen"]), bool(record.data.get("greater_is_better", True)))


def _compared(result: PartResult, groups: list[Group]) -> None:
    part, where = result.part, result.where
    metrics = part["metric"] if isinstance(part["metric"], list) else [part["metric"]]
    for key in metrics:
        pairs = []
        for i, (a, b) in enumerate(part["comparisons"]):
            found = [[g for g in groups if matches(g, s)] for s in (a, b)]
            pairs += _pairs(result, found, a, b, key, f"{where}.comparisons[{i}]")
        estimates = [None if x is None or y is None else estimate(x, y, key) for x, y, _ in pairs]
        direction = part.get("direction")
        judged = JUDGES[part["kind"]](estimates, float(part["margin"]),
                                      *([direction] if part["kind"] != "equivalent" else []))
        for (x, y, names), e, j in zip(pairs, estimates, judged, strict=True):
            if x is None or y is None:
                j = Judged(INCONCLUSIVE, f"no group of these runs matches {names[2]}", None, j.level, {}, None,
                           note=f"cannot: run {names[2]}")
            comparison = Comparison(names[0], names[1], key, (len(by_seed(x, key)) if x else 0,
                                                              len(by_seed(y, key)) if y else 0),
                                    (x and mean(x, key), y and mean(y, key)), j, e and e.difference,
                                    (x and mean(x, "params.trainable"), y and mean(y, "params.trainable")))
            if part.get("matched"):
                on = part["matched"]["by"]
                comparison.gains = (x and mean(x, on), y and mean(y, on))
            _check_params(part, comparison)
            result.comparisons.append(comparison)
            result.judged.append(comparison.judged)


def _pairs(result: PartResult, found: list[list[Group]], a: list[str], b: list[str], key: str,
           where: str) -> list[tuple[Optional[Group], Optional[Group], tuple[str, str, str]]]:
    """The pairs of groups one comparison tests: one each, or the matched-gain pairs of two families."""
    names = (" ".join(a), " ".join(b))
    missing = [f"[{n}]" for n, f in zip(names, found, strict=True) if not f]
    if missing:
        return [(None, None, (*names, " and ".join(missing)))]
    matched = result.part.get("matched")
    if not matched:
        for j, f in enumerate(found):
            if len(f) > 1:
                raise ConfigError(f"{where}[{j}]: {list((a, b)[j])} matches {len(f)} groups "
                                  f"({', '.join(g.setting for g in f)}); name one, or compare families with matched:")
        return [(found[0][0], found[1][0], (found[0][0].setting, found[1][0].setting, ""))]
    on, within = matched["by"], float(matched["within"])
    fronts = [front(f, on, key, result.part.get("direction")) for f in found]
    for name, family, on_front in zip(names, found, fronts, strict=True):
        result.points[name] = [{"x": mean(g, on), "y": mean(g, key), "setting": g.setting, "front": g in on_front}
                               for g in family]
    pairs = []
    for g in fronts[0]:
        near = min(fronts[1], key=lambda h: abs((mean(h, on) or 0) - (mean(g, on) or 0)), default=None)
        if near is not None and abs((mean(near, on) or 0) - (mean(g, on) or 0)) <= within:
            pairs.append((g, near, (g.setting, near.setting, "")))
    if not pairs:
        wanted = f"groups of [{names[0]}] and [{names[1]}] whose mean {on} lie within {within:g}"
        return [(None, None, (*names, wanted))]
    return pairs


def front(family: list[Group], on: str, key: str, direction: Optional[str]) -> list[Group]:
    """The groups of a family no other beats on both ``on`` (higher) and ``key`` (by ``direction``;
    every group with a number where there is no direction)."""
    points = [(g, mean(g, on), mean(g, key)) for g in family]
    points = [(g, x, y) for g, x, y in points if x is not None and y is not None]
    if direction is None:
        return [g for g, _, _ in points]
    sign = -1.0 if direction == "lower" else 1.0
    return [g for g, x, y in points if not any(x2 >= x and sign * y2 >= sign * y and (x2 > x or sign * y2 > sign * y)
                                               for h, x2, y2 in points if h is not g)]


def _check_params(part: dict[str, Any], c: Comparison) -> None:
    """``fewer_params``: a comparison whose first group trains more parameters does not test the claim."""
    a, b = c.params
    if part.get("fewer_params") and a is not None and b is not None and a > b:
        c.judged = Judged(INCONCLUSIVE, f"the first trains more parameters ({a:,.0f} > {b:,.0f}): not the claim's "
                          "comparison", c.judged.interval, c.judged.level, c.judged.p, None,
                          note="cannot: compare at equal or fewer trainable parameters")
