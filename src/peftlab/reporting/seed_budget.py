"""A seed budget: the work of ``hydra/sweeper=seed_budget`` (hydra_plugins/peftlab_sweeps).

Stein's two-stage rule, so that the intervals it leads to keep their 95% coverage: every group of a
grid (one combination of the swept settings) runs a pilot of seeds (1..``min_seeds``, or those the
grid names); the pilot's spread s0 decides how many seeds the group needs for a 95% interval of
``±half_width`` (``n = (t(n0 - 1) s0 / half_width)^2``, at most ``max_seeds``), and one more round
runs the rest. The interval ``peftlab-report`` prints for such a group is the two-stage one: the
mean of all its seeds, half-width ``t(n0 - 1) s0 / sqrt(n)`` (reporting/intervals.py). Adding seeds
one at a time until the spread of those run so far looks small enough (the rule before this one)
stops exactly when that spread is small by chance, and its intervals covered 0.91 instead of 0.95
(tests/test_intervals.py). ``seed_budget.json`` in the sweep folder records the pilot, the decision
and every group's folders.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from peftlab.config.checks import check
from peftlab.errors import ConfigError
from peftlab.reporting.intervals import Interval, two_stage_interval, two_stage_seeds
from peftlab.reporting.runs import read_run
from peftlab.runs.files import write_json
from peftlab.runs.metrics import metric_at
from peftlab.runs.sweeps import job_folder

log = logging.getLogger("peftlab.sweeps")

FILE = "seed_budget.json"
RULE = "two-stage (Stein): the pilot's spread decides the seeds; interval t(n0-1) s0 / sqrt(n)"
MET, MAX_SEEDS, FAILED, MORE = "met", "max seeds", "stopped: a job failed", "more seeds"
MAX_SEEDS_LIMIT = 1000  # a budget of more seeds than this per group is a typo
MAX_SEED = 2**32 - 1  # the largest seed the random generators take (Lightning's seed_everything)


@dataclass(frozen=True)
class Budget:
    half_width: float  # the target: the 95% interval's half-width
    min_seeds: int  # the pilot's seeds: 1..min_seeds (unless the grid names seeds)
    max_seeds: int
    metric: Optional[str] = None  # a metrics.json key; null: the task's primary test metric

    def __post_init__(self) -> None:
        key = "hydra.sweeper."
        check(isinstance(self.half_width, (int, float)) and not isinstance(self.half_width, bool)
              and math.isfinite(self.half_width) and self.half_width > 0, key + "half_width",
              "must be a number > 0", self.half_width)
        check(self.min_seeds >= 2, key + "min_seeds", "must be >= 2 (an interval needs two seeds)", self.min_seeds)
        check(self.max_seeds >= self.min_seeds, key + "max_seeds", f"must be >= min_seeds ({self.min_seeds})",
              self.max_seeds)
        check(self.max_seeds <= MAX_SEEDS_LIMIT, key + "max_seeds", f"must be <= {MAX_SEEDS_LIMIT}", self.max_seeds)
        check(self.metric is None or (isinstance(self.metric, str) and "." in self.metric), key + "metric",
              "must be a dotted metrics.json key (test.exact_match, val.loss, forgetting.delta, ...) or null",
              self.metric)


@dataclass
class GroupBudget:
    """One group of the grid: its settings, the seeds it ran and its values of the metric."""

    overrides: list[str]
    seeds: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # every job's folder, failed ones too
    failed: list[str] = field(default_factory=list)  # folders of failed jobs
    pilot: list[float] = field(default_factory=list)  # the pilot's values
    needed: Optional[int] = None  # the seeds the pilot's spread asks for (capped at max_seeds)
    decision: str = MORE

    @property
    def name(self) -> str:
        return " ".join(self.overrides) or "(defaults)"

    def interval(self) -> Optional[Interval]:
        if len(self.pilot) < 2 or not self.values:
            return None
        return two_stage_interval(self.values, statistics.stdev(self.pilot), len(self.pilot))

    def plan(self, budget: Budget) -> int:
        """After the pilot: how many more seeds (0 where the pilot suffices or a job failed)."""
        self.pilot = list(self.values)
        if self.failed:
            self.decision = FAILED
            return 0
        self.needed = two_stage_seeds(self.pilot, budget.half_width, budget.max_seeds)
        more = self.needed - len(self.seeds)
        if more == 0:
            self.decide(budget)
        return more

    def decide(self, budget: Budget) -> str:
        """After the last round: whether the interval reached the target."""
        found = self.interval()
        if self.failed:
            self.decision = FAILED
        elif found is not None and found.half is not None and found.half <= budget.half_width + 1e-12:
            self.decision = MET
        else:
            self.decision = MAX_SEEDS
        return self.decision

    def record(self) -> dict[str, Any]:
        found = self.interval()
        return {"group": self.name, "seeds": list(self.seeds), "n": len(self.values),
                "mean": statistics.fmean(self.values) if self.values else None,
                "half_width": None if found is None else found.half,
                "pilot": {"seeds": len(self.pilot),
                          "sd": statistics.stdev(self.pilot) if len(self.pilot) > 1 else None},
                "needed": self.needed, "folders": list(self.folders), "failed": list(self.failed),
                "decision": self.decision}


def first_seeds(seed_values: Optional[list[str]], budget: Budget) -> list[int]:
    """The pilot's seeds: those the grid names (``seed=1,2,3``), else 1..min_seeds."""
    if seed_values is None:
        return list(range(1, budget.min_seeds + 1))
    try:
        seeds = [int(v) for v in seed_values]
    except ValueError:
        raise ConfigError(f"seed: the seed budget needs whole numbers, got {','.join(seed_values)}") from None
    check(len(set(seeds)) == len(seeds), "seed", "must not repeat a seed", ",".join(seed_values))
    check(len(seeds) >= 2, "seed", "must name at least two seeds (the pilot's spread needs two)",
          ",".join(seed_values))
    check(len(seeds) <= budget.max_seeds, "seed", f"names more seeds than hydra.sweeper.max_seeds "
          f"({budget.max_seeds})", ",".join(seed_values))
    top = MAX_SEED - budget.max_seeds  # the second round adds seeds above the pilot's largest
    check(all(0 <= s <= top for s in seeds), "seed", f"must be whole numbers in [0, {top}] (the second round adds "
          "seeds above the pilot's, up to hydra.sweeper.max_seeds)", ",".join(seed_values))
    return seeds


def job_value(run_dir: Optional[Path], metric: Optional[str]) -> tuple[Optional[float], str]:
    """The metric of one finished job, and the key it was read at (None when the job failed or its
    metric is not a finite number)."""
    if run_dir is None:
        return None, metric or "?"
    run = read_run(run_dir)
    if run.status != "finished" or not run.metrics:
        return None, metric or "?"
    key = metric or f"test.{run.metrics.get('primary_metric') or 'loss'}"
    value = metric_at(run.metrics, key)
    if value is None:
        raise ConfigError(f"hydra.sweeper.metric: {key!r} is not in {run_dir / 'metrics.json'}")
    # a NaN or infinity is no number to average: the job counts as failed, and its group stops
    return (float(value) if math.isfinite(value) else None), key


def summarise(groups: list[GroupBudget], budget: Budget, key: str, stage: str) -> str:
    lines = [f"seed budget, {stage}: {key}, target 95% CI within ±{budget.half_width:g}"]
    for g in groups:
        r = g.record()
        half = "—" if r["half_width"] is None else f"±{r['half_width']:.4f}"
        mean = "—" if r["mean"] is None else f"{r['mean']:.4f}"
        needs = f", needs {g.needed}" if g.needed is not None else ""
        lines.append(f"  {g.name}: n={r['n']}{needs} mean {mean} {half} -> {g.decision}")
    return "\n".join(lines)


def write_record(sweep_dir: Path, budget: Budget, key: str, stages: list[list[dict[str, Any]]], done: bool) -> None:
    write_json(sweep_dir / FILE, {
        "metric": key, "half_width": budget.half_width, "min_seeds": budget.min_seeds,
        "max_seeds": budget.max_seeds, "confidence": 0.95, "rule": RULE, "finished": done,
        "rounds": [{"round": i + 1, "groups": groups} for i, groups in enumerate(stages)]})


def run_rounds(grid: list[list[str]], seeds: list[int], budget: Budget, sweep_dir: Path,
               launch: Callable[[list[list[str]], int], Sequence[Any]]) -> list[Sequence[Any]]:
    """Launch the pilot (every group, ``seeds``), then in one more round the seeds each group's pilot
    spread asks for. ``launch(batch, first_job_number)`` returns Hydra's job returns."""
    groups = [GroupBudget(list(overrides)) for overrides in grid]
    state = {"key": budget.metric or "?", "job": 0}
    returns = [_launch_round(groups, [(g, s) for g in groups for s in seeds], budget, launch, state)]
    more = [(g, max(g.seeds) + 1 + i) for g in groups for i in range(g.plan(budget))]
    stages = [[g.record() for g in groups]]
    write_record(sweep_dir, budget, state["key"], stages, done=not more)
    log.info("%s", summarise(groups, budget, state["key"], "after the pilot"))
    if more:
        returns.append(_launch_round(groups, more, budget, launch, state))
    for g in groups:
        g.decide(budget)
    stages.append([g.record() for g in groups])
    write_record(sweep_dir, budget, state["key"], stages, done=True)
    log.info("%s", summarise(groups, budget, state["key"], "final"))
    spent = sum(len(g.seeds) for g in groups)
    log.info("seed budget: %d jobs in %d round(s); %d group(s) met the target, %d reached max_seeds, %d stopped "
             "on a failed job (%s)", spent, len(returns), sum(g.decision == MET for g in groups),
             sum(g.decision == MAX_SEEDS for g in groups), sum(g.decision == FAILED for g in groups),
             sweep_dir / FILE)
    return returns


def _launch_round(groups: list[GroupBudget], pending: list[tuple[GroupBudget, int]], budget: Budget,
                  launch: Callable[[list[list[str]], int], Sequence[Any]], state: dict[str, Any]) -> Sequence[Any]:
    batch = [g.overrides + [f"seed={s}"] for g, s in pending]
    results = launch(batch, state["job"])
    state["job"] += len(batch)
    for (g, s), ret in zip(pending, results, strict=True):
        g.seeds.append(s)
        run_dir = job_folder(ret)
        g.folders.append(str(run_dir) if run_dir else f"seed {s} (no folder)")
        value, state["key"] = job_value(run_dir, budget.metric)
        if value is None:
            g.failed.append(str(run_dir) if run_dir else f"seed {s} (no folder)")
        else:
            g.values.append(value)
    return results


def two_stage_groups(folders: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Every seed-budget group recorded under ``folders`` (their ``seed_budget.json``), by each of
    its job folders: what a report needs for the two-stage interval (the pilot's seeds and spread,
    and the metric the budget was run on)."""
    found: dict[str, dict[str, Any]] = {}
    for root in folders:
        for path in sorted(Path(root).rglob(FILE)):
            try:
                record = json.loads(path.read_text())
                last = record["rounds"][-1]["groups"]
            except (ValueError, KeyError, IndexError, TypeError, OSError):
                raise ConfigError(f"{path}: not a readable seed-budget record") from None
            for group in last:
                pilot = group.get("pilot") or {}
                if not isinstance(pilot.get("sd"), (int, float)) or not isinstance(pilot.get("seeds"), int):
                    continue  # a record of the rule before the two-stage one: its groups get the plain interval
                for folder in group.get("folders") or []:
                    found[str(Path(folder).resolve())] = {
                        "pilot_sd": float(pilot["sd"]), "pilot_seeds": pilot["seeds"], "metric": record.get("metric"),
                        "group": (str(path), group.get("group"))}  # one budget group of one sweep
    return found
