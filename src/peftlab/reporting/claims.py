"""The verdict rules of a published claim (config/claims.py states one), on numbers: each comparison
of a claim becomes *reproduced*, *not reproduced* or *inconclusive*, with the budget that would
resolve an inconclusive one. reporting/claim_runs.py feeds them the runs; reporting/claim_page.py
writes the pages. The rules (docs/guides/claims.md says why these):

- **equivalent** (margin m): TOST at 0.05, Holm over the claim's comparisons of one metric.
  Reproduced when both one-sided tests reject (the 90% interval of the difference inside ±m); not
  reproduced when the difference lies beyond ±m (one-sided test at 0.05: the 90% interval wholly
  outside ±m); inconclusive otherwise.
- **better** (direction, margin m): reproduced when the 95% interval of the difference lies on the
  claimed side of 0 (two-sided test at 0.05, Holm) and not wholly inside ±m; not reproduced when it
  lies on the other side, or when the difference is shown to be smaller than m (TOST, as above: an
  effect too small to matter is no reproduction); inconclusive otherwise.
- **not_worse** (direction, margin m; "matches or beats"): non-inferiority, the CONSORT convention:
  reproduced when the 95% interval of how much worse the first is lies below m (one-sided 0.025,
  Holm); not reproduced when it lies wholly above m; inconclusive otherwise.
- **correlated** (margin r0): Pearson r over runs with its Fisher-z 95% interval; reproduced when the
  interval lies above r0, not reproduced when it lies below r0, inconclusive when it holds r0.
- **ratio** (expected e, margin f): see ``judge_ratio``.

The budget that would resolve an inconclusive comparison: the seeds per group at which the interval,
at the observed difference and spread, would clear its bound (Bonferroni over the comparisons, a
bound on Holm's), or "cannot" when the difference sits on the bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from peftlab.reporting.compare import holm

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
ALPHA = 0.05
MAX_N = 10_000  # a budget beyond this many seeds (or runs) per group is "cannot" at this spread
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """The difference first - second of one metric between two groups, with its standard error."""

    difference: float
    se: float
    df: float
    spread: float  # the standard deviation the standard error comes from (paired: of the differences)
    paired: bool
    n: tuple[int, int]

    def interval(self, level: float) -> tuple[float, float]:
        half = _t(level, self.df) * self.se if self.se > 0 else 0.0
        return self.difference - half, self.difference + half

    def at(self, n: int) -> tuple[float, float]:
        """(standard error, degrees of freedom) with ``n`` seeds per group at the same spread."""
        return (self.spread / math.sqrt(n), n - 1.0) if self.paired else (self.spread * math.sqrt(2 / n), 2 * n - 2.0)


@dataclass
class Judged:
    """One comparison's verdict, and what would resolve it."""

    verdict: str
    reason: str
    interval: Optional[tuple[float, float]]  # the interval the verdict reads
    level: Optional[float]  # the interval's confidence; None: a ratio's bracket from its search
    p: dict[str, Optional[float]] = field(default_factory=dict)  # Holm-adjusted where a family has several
    needed: Optional[int] = 0  # seeds per group (runs for correlated) that would resolve it; None: cannot; 0: resolved
    unit: str = "seeds per group"
    note: str = ""

    @property
    def resolve(self) -> str:
        if self.verdict != INCONCLUSIVE:
            return ""
        if self.needed is None:
            return self.note or f"cannot: no number of {self.unit} resolves it at the observed difference"
        return f"about {self.needed} {self.unit} at the observed difference and spread" + (
            f"; {self.note}" if self.note else "")


def _t(level: float, df: float) -> float:
    """The two-sided ``level`` quantile of Student's t (the normal's where df is infinite)."""
    from scipy.stats import t

    return float(t.ppf(1 - (1 - level) / 2, df)) if df > 0 else math.inf


def _sf(x: float, df: float) -> float:
    from scipy.stats import t

    return float(t.sf(x, df))


def _one_sided(gap: float, e: Estimate) -> float:
    """P(T > gap / se): the one-sided p-value that the difference clears a bound by ``gap``."""
    if e.se == 0:
        return 0.0 if gap > 0 else 1.0
    return _sf(gap / e.se, e.df)


def seeds_for(e: Estimate, gap: float, one_sided: float) -> Optional[int]:
    """The fewest seeds per group at which ``t(1 - one_sided) * se < gap`` at the observed spread
    (None: no number does, the gap is not positive)."""
    if not gap > 0:
        return None
    if e.spread == 0:
        return 2
    from scipy.stats import t

    for n in range(2, MAX_N + 1):
        se, df = e.at(n)
        if float(t.ppf(1 - one_sided, df)) * se < gap:
            return n
    return None


def _fewest(*options: Optional[int]) -> Optional[int]:
    found = [n for n in options if n is not None]
    return min(found) if found else None


def judge_equivalent(estimates: Sequence[Optional[Estimate]], margin: float) -> list[Judged]:
    """TOST of each comparison at ``margin``, Holm over them."""
    tost = [None if e is None else max(_one_sided(e.difference + margin, e), _one_sided(margin - e.difference, e))
            for e in estimates]
    out = [None if e is None else _one_sided(abs(e.difference) - margin, e) for e in estimates]
    k, level = max(1, sum(e is not None for e in estimates)), 1 - 2 * ALPHA
    found = []
    for e, p_eq, p_out in zip(estimates, holm(tost), holm(out), strict=True):
        if e is None:
            found.append(_missing(level))
            continue
        ci, d = e.interval(level), abs(e.difference)
        p = {"tost": p_eq, "outside": p_out}
        if p_eq is not None and p_eq < ALPHA:
            found.append(Judged(REPRODUCED, f"the 90% interval lies inside ±{margin:g}", ci, level, p))
        elif p_out is not None and p_out < ALPHA:
            found.append(Judged(NOT_REPRODUCED, f"the difference lies beyond ±{margin:g}", ci, level, p))
        else:
            n = _fewest(seeds_for(e, margin - d, ALPHA / k), seeds_for(e, d - margin, ALPHA / k))
            found.append(Judged(INCONCLUSIVE, f"the 90% interval crosses ±{margin:g}", ci, level, p, n))
    return found


def judge_better(estimates: Sequence[Optional[Estimate]], margin: float, direction: str) -> list[Judged]:
    """Each comparison's difference on the claimed side of 0 (``direction``: lower or higher is
    better for the first), Holm over them; shown smaller than ``margin``: no effect that matters."""
    sign = -1.0 if direction == "lower" else 1.0
    two = [None if e is None else min(1.0, 2 * _one_sided(abs(e.difference), e)) for e in estimates]
    tost = [None if e is None else max(_one_sided(e.difference + margin, e), _one_sided(margin - e.difference, e))
            for e in estimates]
    k, level = max(1, sum(e is not None for e in estimates)), 1 - ALPHA
    found = []
    for e, p_two, p_eq in zip(estimates, holm(two), holm(tost), strict=True):
        if e is None:
            found.append(_missing(level))
            continue
        ci, p = e.interval(level), {"difference": p_two, "within_margin": p_eq}
        claimed = sign * e.difference > 0
        if p_eq is not None and p_eq < ALPHA:
            found.append(Judged(NOT_REPRODUCED, f"the difference is smaller than the margin ±{margin:g}", ci, level, p))
        elif p_two is not None and p_two < ALPHA:
            side = "the claimed side" if claimed else "the other side"
            found.append(Judged(REPRODUCED if claimed else NOT_REPRODUCED, f"the 95% interval lies on {side} of 0",
                                ci, level, p))
        else:
            d = abs(e.difference)
            n = _fewest(seeds_for(e, d, ALPHA / (2 * k)), seeds_for(e, margin - d, ALPHA / k))
            found.append(Judged(INCONCLUSIVE, "the 95% interval holds 0", ci, level, p, n))
    return found


def judge_not_worse(estimates: Sequence[Optional[Estimate]], margin: float, direction: str) -> list[Judged]:
    """Non-inferiority: the first is worse than the second by less than ``margin`` (95% interval)."""
    sign = -1.0 if direction == "lower" else 1.0
    worse = [None if e is None else -sign * e.difference for e in estimates]  # > 0: the first is worse
    p_ok = [None if e is None else _one_sided(margin - w, e) for e, w in zip(estimates, worse, strict=True)]
    p_bad = [None if e is None else _one_sided(w - margin, e) for e, w in zip(estimates, worse, strict=True)]
    k, level, alpha = max(1, sum(e is not None for e in estimates)), 1 - ALPHA, ALPHA / 2
    found = []
    for e, w, ok, bad in zip(estimates, worse, holm(p_ok), holm(p_bad), strict=True):
        if e is None:
            found.append(_missing(level))
            continue
        ci, p = e.interval(level), {"not_worse": ok, "worse": bad}
        if ok is not None and ok < alpha:
            found.append(Judged(REPRODUCED, f"the 95% interval excludes being worse by {margin:g} or more", ci,
                                level, p))
        elif bad is not None and bad < alpha:
            found.append(Judged(NOT_REPRODUCED, f"the 95% interval lies wholly beyond worse by {margin:g}", ci,
                                level, p))
        else:
            n = _fewest(seeds_for(e, margin - w, alpha / k), seeds_for(e, w - margin, alpha / k))
            found.append(Judged(INCONCLUSIVE, f"the 95% interval crosses worse by {margin:g}", ci, level, p, n))
    return found


def _missing(level: float) -> Judged:
    return Judged(INCONCLUSIVE, "fewer than 2 finished runs in a group", None, level, {}, 2,
                  note="at least 2 finished runs in each group")


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Pearson's r with its Fisher-z 95% interval, and Spearman's rho, over paired values."""
    from scipy.stats import pearsonr, spearmanr

    n = len(x)
    if n < 4 or len(set(x)) < 2 or len(set(y)) < 2:
        return {"n": n, "r": None, "ci95": None, "spearman": None}
    r = float(pearsonr(x, y)[0])
    z, half = math.atanh(max(-1 + 1e-12, min(1 - 1e-12, r))), Z95 / math.sqrt(n - 3)
    return {"n": n, "r": r, "ci95": (math.tanh(z - half), math.tanh(z + half)), "spearman": float(spearmanr(x, y)[0])}


def judge_correlated(found: dict[str, Any], margin: float) -> Judged:
    """The correlation ``found`` (``correlation()``) against the smallest one that counts."""
    n, r, ci = found["n"], found["r"], found["ci95"]
    if r is None:
        return Judged(INCONCLUSIVE, "fewer than 4 runs, or one number does not vary", None, 0.95, {},
                      max(4, n + 1), unit="runs")
    if ci[0] >= margin:
        return Judged(REPRODUCED, f"the 95% interval of r lies above {margin:g}", ci, 0.95)
    if ci[1] < margin:
        return Judged(NOT_REPRODUCED, f"the 95% interval of r lies below {margin:g}", ci, 0.95)
    gap = abs(math.atanh(max(-1 + 1e-12, min(1 - 1e-12, r))) - math.atanh(margin))
    needed = math.floor(3 + (Z95 / gap) ** 2) + 1 if gap > 0 else None
    return Judged(INCONCLUSIVE, f"the 95% interval of r holds {margin:g}", ci, 0.95, {},
                  needed if needed is None or needed <= MAX_N else None, unit="runs")


def combine(judged: Sequence[Judged]) -> tuple[str, Optional[int], str]:
    """A claim's verdict from its comparisons: reproduced when each is, not reproduced when any is
    not, else inconclusive, with the largest budget an inconclusive one needs (its unit)."""
    if judged and all(j.verdict == REPRODUCED for j in judged):
        return REPRODUCED, 0, ""
    if any(j.verdict == NOT_REPRODUCED for j in judged):
        return NOT_REPRODUCED, 0, ""
    open_ = [j for j in judged if j.verdict == INCONCLUSIVE]
    if not open_ or any(j.needed is None for j in open_):
        return INCONCLUSIVE, None, next((j.resolve for j in open_ if j.needed is None), "cannot")
    worst = max(open_, key=lambda j: j.needed or 0)
    return INCONCLUSIVE, worst.needed, worst.resolve
