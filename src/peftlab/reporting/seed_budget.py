"""A seed budget: the work of ``hydra/sweeper=seed_budget`` (hydra_plugins/peftlab_sweeps).

Every group of a grid (one combination of the swept settings) starts with a first round of seeds;
after each round, a group whose 95% interval of the metric (as ``peftlab-report`` prints it) is
wider than ``±half_width`` gets one more seed, until its interval is narrow enough or it has
``max_seeds``. ``seed_budget.json`` in the sweep folder records every round and what was decided.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from peftlab.config.checks import check
from peftlab.errors import ConfigError
from peftlab.reporting.runs import read_run, stats
from peftlab.runs.files import write_json
from peftlab.runs.metrics import metric_at

log = logging.getLogger("peftlab.sweeps")

MET, MAX_SEEDS, FAILED, MORE = "met", "max seeds", "stopped: a job failed", "one more seed"


@dataclass(frozen=True)
class Budget:
    half_width: float  # the target: the 95% interval's half-width
    min_seeds: int  # the first round's seeds: 1..min_seeds (unless the grid names seeds)
    max_seeds: int
    metric: Optional[str] = None  # a metrics.json key; null: the task's primary test metric

    def __post_init__(self) -> None:
        key = "hydra.sweeper."
        check(math.isfinite(self.half_width) and self.half_width > 0, key + "half_width", "must be a number > 0",
              self.half_width)
        check(self.min_seeds >= 2, key + "min_seeds", "must be >= 2 (an interval needs two seeds)", self.min_seeds)
        check(self.max_seeds >= self.min_seeds, key + "max_seeds", f"must be >= min_seeds ({self.min_seeds})",
              self.max_seeds)


@dataclass
class GroupBudget:
    """One group of the grid: its settings, the seeds it ran and its values of the metric."""

    overrides: list[str]
    seeds: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # folders of failed jobs
    decision: str = MORE

    @property
    def name(self) -> str:
        return " ".join(self.overrides) or "(defaults)"

    def interval(self) -> dict[str, Any]:
        return stats(self.values)

    def decide(self, budget: Budget) -> str:
        half = self.interval()["ci95"]
        if self.failed:
            self.decision = FAILED
        elif half is not None and half <= budget.half_width and len(self.values) >= budget.min_seeds:
            self.decision = MET
        elif len(self.seeds) >= budget.max_seeds:
            self.decision = MAX_SEEDS
        else:
            self.decision = MORE
        return self.decision

    def next_seed(self) -> int:
        return max(self.seeds) + 1

    def record(self) -> dict[str, Any]:
        s = self.interval()
        return {"group": self.name, "seeds": list(self.seeds), "n": s["n"], "mean": s["mean"],
                "half_width": s["ci95"], "failed": list(self.failed), "decision": self.decision}


def first_seeds(seed_values: Optional[list[str]], budget: Budget) -> list[int]:
    """The first round's seeds: those the grid names (``seed=1,2,3``), else 1..min_seeds."""
    if seed_values is None:
        return list(range(1, budget.min_seeds + 1))
    try:
        seeds = [int(v) for v in seed_values]
    except ValueError:
        raise ConfigError(f"seed: the seed budget needs whole numbers, got {','.join(seed_values)}") from None
    check(len(set(seeds)) == len(seeds), "seed", "must not repeat a seed", ",".join(seed_values))
    check(len(seeds) <= budget.max_seeds, "seed", f"names more seeds than hydra.sweeper.max_seeds "
          f"({budget.max_seeds})", ",".join(seed_values))
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


def summarise(groups: list[GroupBudget], budget: Budget, key: str, round_: int) -> str:
    lines = [f"seed budget, round {round_}: {key}, target 95% CI within ±{budget.half_width:g}"]
    for g in groups:
        r = g.record()
        half = "—" if r["half_width"] is None else f"±{r['half_width']:.4f}"
        mean = "—" if r["mean"] is None else f"{r['mean']:.4f}"
        lines.append(f"  {g.name}: n={r['n']} mean {mean} {half} -> {g.decision}")
    return "\n".join(lines)


def write_record(sweep_dir: Path, budget: Budget, key: str, rounds: list[list[dict[str, Any]]],
                 done: bool) -> None:
    write_json(sweep_dir / "seed_budget.json", {
        "metric": key, "half_width": budget.half_width, "min_seeds": budget.min_seeds,
        "max_seeds": budget.max_seeds, "confidence": 0.95, "finished": done,
        "rounds": [{"round": i + 1, "groups": groups} for i, groups in enumerate(rounds)]})


def run_rounds(grid: list[list[str]], seeds: list[int], budget: Budget, sweep_dir: Path,
               launch: Callable[[list[list[str]], int], Sequence[Any]]) -> list[Sequence[Any]]:
    """Launch the first round (every group, ``seeds``), then one more seed for every group that
    needs it, until none does. ``launch(batch, first_job_number)`` returns Hydra's job returns."""
    groups = [GroupBudget(list(overrides)) for overrides in grid]
    pending = [(g, s) for g in groups for s in seeds]
    rounds: list[list[dict[str, Any]]] = []
    returns: list[Sequence[Any]] = []
    key, job = budget.metric or "?", 0
    while pending:
        batch = [g.overrides + [f"seed={s}"] for g, s in pending]
        results = launch(batch, job)
        job += len(batch)
        returns.append(results)
        for (g, s), ret in zip(pending, results, strict=True):
            g.seeds.append(s)
            run_dir = _job_folder(ret)
            value, key = job_value(run_dir, budget.metric)
            if value is None:
                g.failed.append(str(run_dir) if run_dir else f"seed {s} (no folder)")
            else:
                g.values.append(value)
        for g in groups:
            if g.decision == MORE:
                g.decide(budget)
        rounds.append([g.record() for g in groups])
        pending = [(g, g.next_seed()) for g in groups if g.decision == MORE]
        write_record(sweep_dir, budget, key, rounds, done=not pending)
        log.info("%s", summarise(groups, budget, key, len(rounds)))
    spent = sum(len(g.seeds) for g in groups)
    log.info("seed budget: %d jobs over %d round(s); %d group(s) met the target, %d reached max_seeds, %d stopped "
             "on a failed job (%s)", spent, len(rounds), sum(g.decision == MET for g in groups),
             sum(g.decision == MAX_SEEDS for g in groups), sum(g.decision == FAILED for g in groups),
             sweep_dir / "seed_budget.json")
    return returns


def _job_folder(ret: Any) -> Optional[Path]:
    """The folder a Hydra job ran in (run_job records it in the job's Hydra config)."""
    hydra_cfg = getattr(ret, "hydra_cfg", None)
    if hydra_cfg is not None:
        return Path(hydra_cfg.hydra.runtime.output_dir)
    working_dir = getattr(ret, "working_dir", None)
    return Path(working_dir) if working_dir else None
