"""A fair comparison, tuned on validation and tested once: the work of ``hydra/sweeper=tune_then_test``
(hydra_plugins/peftlab_sweeps), and reading its record back for reports.

Every group of the comparison (one combination of the swept settings: a method, a rank, a
precision...) gets the same search budget: its search space (shared, or its own of the same size;
a value ``x3`` is three times the group's own setting, so that every method searches around its
recipe's learning rate), run at the search seeds as jobs that never read the test split
(``test=false``). Each group's setting with the best mean validation metric is then run at fresh
test seeds, scored on the test split once. ``protocol.json`` in the sweep folder states the plan
(spaces, budget, metric, equivalence margins) before the first job, then every search score, the
choices and the test jobs; ``peftlab-report`` reads it (reporting/protocol_report.py).
"""

from __future__ import annotations

import datetime
import itertools
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from peftlab.config.checks import check
from peftlab.errors import ConfigError
from peftlab.reporting.runs import read_run
from peftlab.runs.files import write_json
from peftlab.runs.metrics import metric_at
from peftlab.runs.sweeps import job_folder

log = logging.getLogger("peftlab.sweeps")

FILE = "protocol.json"
# what a search job never does: read the test split (zero-shot, the test, the merge's test check)
SEARCH_JOB = ["test=false", "zero_shot=false", "merge_after=false", "save_adapter=false", "forgetting=null",
              "kl_to_base=null"]
MAX_JOBS = 10_000  # a plan of more jobs than this is a typo


@dataclass(frozen=True)
class Plan:
    search: dict[str, list[str]]  # key -> values ("x3": three times the group's own)
    group_search: dict[str, dict[str, list[str]]]  # a group's own space, by the group's name
    search_seeds: list[int]
    test_seeds: list[int]
    metric: Optional[str]  # null: val.<primary metric>
    direction: Optional[str]  # maximize | minimize; null: the task's direction (minimize a loss)
    margins: dict[str, float]  # equivalence margins stated before the runs
    tune_on_test: bool = False

    def __post_init__(self) -> None:
        key = "hydra.sweeper."
        check(bool(self.search) or bool(self.group_search), key + "search",
              "must name at least one setting to search (optim.lr: x0.3,x1,x3)", self.search)
        for name, seeds in (("search_seeds", self.search_seeds), ("test_seeds", self.test_seeds)):
            check(len(seeds) > 0 and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds), key + name,
                  "must be a non-empty list of whole numbers", list(seeds))
            check(len(set(seeds)) == len(seeds), key + name, "must not repeat a seed", list(seeds))
        overlap = sorted(set(self.search_seeds) & set(self.test_seeds))
        check(not overlap, key + "test_seeds", f"must be fresh seeds, not search seeds ({overlap} are both)",
              list(self.test_seeds))
        check(len(self.test_seeds) >= 2, key + "test_seeds", "must name at least two seeds (an interval needs two)",
              list(self.test_seeds))
        if self.metric is not None:
            check(isinstance(self.metric, str) and "." in self.metric, key + "metric",
                  "must be a dotted metrics.json key (val.exact_match, val.loss, ...) or null", self.metric)
            if self.metric.startswith(("test.", "zero_shot.")) and not self.tune_on_test:
                raise ConfigError(f"{key}metric={self.metric}: the search would choose by the test split, so the test "
                                  "figures of the choice would be optimistic; choose by a validation metric (the "
                                  "default, val.<primary metric>), or set tune_on_test=true to do it anyway")
        if self.direction is not None:
            check(self.direction in ("maximize", "minimize"), key + "direction", "must be maximize, minimize or null",
                  self.direction)
        elif self.metric is not None and not self.metric.endswith("loss"):
            raise ConfigError(f"{key}direction: give maximize or minimize with {key}metric={self.metric} (only the "
                              "default metric's direction, the task's own, is known)")
        for name, margin in self.margins.items():
            check(isinstance(margin, (int, float)) and not isinstance(margin, bool) and math.isfinite(margin)
                  and margin > 0, f"{key}margins.{name}", "must be a finite number > 0", margin)


def parse_groups(value: Any, key: str = "group_search") -> dict[str, Any]:
    """A mapping by name (a group's space, a metric's margin), or one line naming ``key``."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"hydra.sweeper.{key} must be a mapping by name, got {value!r}")
    return dict(value)


def parse_space(key: str, space: Any) -> dict[str, list[str]]:
    """A search space: {setting: values}, each value list as parse_values reads it."""
    if not isinstance(space, dict) or not all(isinstance(k, str) for k in space):
        raise ConfigError(f"{key} must be a mapping of settings to their values ({{optim.lr: 'x0.3,x1,x3'}}), "
                          f"got {space!r}")
    return {k: parse_values(k, v) for k, v in space.items()}


def parse_values(key: str, value: Any) -> list[str]:
    """A search space's values: a list, or Hydra's comma-separated form ("1e-4,3e-4" / "x0.3,x1,x3")."""
    if not isinstance(value, (list, tuple, str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"hydra.sweeper.search.{key} must be a list of values or 'a,b,c', got {value!r}")
    values = [str(v).strip() for v in value] if isinstance(value, (list, tuple)) else [
        v.strip() for v in str(value).split(",")]
    check(bool(values) and all(values), f"hydra.sweeper.search.{key}", "must list at least one value", value)
    for v in values:
        if v.startswith("x"):
            try:
                factor = float(v[1:])
            except ValueError:
                factor = float("nan")
            check(math.isfinite(factor) and factor > 0, f"hydra.sweeper.search.{key}",
                  "values that start with x must be a factor > 0 of the group's own setting (x0.3, x1, x3)", v)
    return values


@dataclass
class GroupPlan:
    """One group of the comparison: its settings, its search space, and what the search found."""

    overrides: list[str]
    space: dict[str, list[str]]  # as stated: relative values still relative
    shown: list[str] = field(default_factory=list)  # the swept settings that name it (recipe=lora)
    settings: list[list[str]] = field(default_factory=list)  # the space resolved: one list of overrides each
    scores: list[dict[str, Any]] = field(default_factory=list)  # each search job: setting, seed, value, folder
    chosen: Optional[list[str]] = None
    chosen_score: Optional[float] = None
    test_folders: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return " ".join(self.shown or self.overrides) or "(defaults)"

    def resolve(self, own: Callable[[list[str], str], Any]) -> None:
        """The space's values as overrides; ``own(group overrides, key)``: the group's composed value."""
        choices = []
        for key, values in self.space.items():
            resolved = []
            for v in values:
                if v.startswith("x"):
                    base = own(self.overrides, key)
                    if not isinstance(base, (int, float)) or isinstance(base, bool):
                        raise ConfigError(f"hydra.sweeper.search.{key}: {v} is relative to the group's own {key}, "
                                          f"which is {base!r} for {self.name}, not a number")
                    v = f"{float(v[1:]) * base:.6g}"
                resolved.append(f"{key}={v}")
            choices.append(resolved)
        self.settings = [list(c) for c in itertools.product(*choices)]

    def choose(self, greater_is_better: bool) -> None:
        """The setting with the best mean score over the search seeds; of equal ones (exact match on a
        small split often ties), the lower mean validation loss, then the first. A setting any of whose
        search jobs failed is not chosen."""
        ranked = []
        for i, setting in enumerate(self.settings):
            jobs = [s for s in self.scores if s["setting"] == setting]
            if not jobs or any(s["value"] is None for s in jobs):
                continue
            score = statistics.fmean(s["value"] for s in jobs)
            losses = [s.get("loss") for s in jobs]
            loss = statistics.fmean(losses) if all(isinstance(x, float) for x in losses) else math.inf
            ranked.append(((-score if greater_is_better else score), loss, i, score, setting))
        if ranked:
            *_, self.chosen_score, self.chosen = min(ranked)

    def record(self) -> dict[str, Any]:
        return {"group": self.name, "overrides": self.overrides, "space": self.space, "settings": self.settings,
                "budget": len(self.settings), "search": self.scores, "chosen": self.chosen,
                "chosen_score": self.chosen_score, "test_folders": self.test_folders}


class Protocol:
    """The sweep's record, written at every stage: plan, search, choice, test."""

    def __init__(self, plan: Plan, groups: list[GroupPlan], sweep_dir: Path):
        self.plan, self.groups, self.sweep_dir = plan, groups, Path(sweep_dir)
        self.stage, self.key, self.greater_is_better = "planned", plan.metric or "val.<primary metric>", True
        self.stated_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        budgets = {g.name: len(g.settings) * len(plan.search_seeds) for g in groups}
        if len(set(budgets.values())) > 1:
            shown = ", ".join(f"{name}: {n}" for name, n in budgets.items())
            raise ConfigError(f"hydra.sweeper.group_search: the groups' search budgets differ ({shown} jobs); a fair "
                              "comparison gives every group the same number of search jobs")
        jobs = sum(budgets.values()) + len(groups) * len(plan.test_seeds)
        check(jobs <= MAX_JOBS, "hydra.sweeper", f"plans at most {MAX_JOBS} jobs", jobs)

    def write(self) -> None:
        p = self.plan
        write_json(self.sweep_dir / FILE, {
            "protocol": "tune_then_test", "stage": self.stage, "stated_at": self.stated_at, "metric": self.key,
            "greater_is_better": self.greater_is_better, "search_seeds": p.search_seeds, "test_seeds": p.test_seeds,
            "budget": len(self.groups[0].settings) * len(p.search_seeds) if self.groups else 0,
            "margins": p.margins, "tune_on_test": p.tune_on_test, "groups": [g.record() for g in self.groups]})

    def search_job(self) -> list[str]:
        """What a search job never does: read the test split (unless the search is let choose by it)."""
        reads_test = (self.plan.metric or "").startswith(("test.", "zero_shot."))
        return [o for o in SEARCH_JOB if not (reads_test and o.startswith(("test=", "zero_shot=")))]

    def run(self, launch: Callable[[list[list[str]], int], Sequence[Any]]) -> list[Sequence[Any]]:
        """Search every group (one round), choose, then test every choice (one round)."""
        self.write()
        jobs = [(g, setting, seed) for g in self.groups for setting in g.settings for seed in self.plan.search_seeds]
        search = self.search_job()
        returns = [launch([g.overrides + setting + [f"seed={seed}", *search] for g, setting, seed in jobs], 0)]
        for (g, setting, seed), ret in zip(jobs, returns[0], strict=True):
            folder = job_folder(ret)
            value, loss = self._value(folder)
            g.scores.append({"setting": setting, "seed": seed, "value": value, "loss": loss, "folder": str(folder)})
        for g in self.groups:
            g.choose(self.greater_is_better)
        self.stage = "searched"
        self.write()
        log.info("%s", self.summary())
        chosen = [g for g in self.groups if g.chosen is not None]
        tests = [(g, seed) for g in chosen for seed in self.plan.test_seeds]
        if tests:
            returns.append(launch([g.overrides + g.chosen + [f"seed={seed}"] for g, seed in tests], len(jobs)))
            for (g, _), ret in zip(tests, returns[-1], strict=True):
                g.test_folders.append(str(job_folder(ret)))
        self.stage = "tested"
        self.write()
        failed = [g.name for g in self.groups if g.chosen is None]
        log.info("tune_then_test: %d search jobs, %d test jobs%s (%s)", len(jobs), len(tests),
                 f"; no setting of {', '.join(failed)} finished its search" if failed else "",
                 self.sweep_dir / FILE)
        return returns

    def _value(self, folder: Optional[Path]) -> tuple[Optional[float], Optional[float]]:
        """A search job's validation score and loss (None: the job failed, or not a finite number)."""
        if folder is None:
            return None, None
        run = read_run(folder)
        if run.status != "finished" or not run.metrics:
            return None, None
        m = run.metrics
        if self.plan.metric is None:
            self.key = f"val.{m.get('primary_metric') or 'loss'}"
        greater = bool(m.get("greater_is_better", True)) if self.key.endswith(f".{m.get('primary_metric')}") else \
            not self.key.endswith("loss")
        self.greater_is_better = {"maximize": True, "minimize": False}.get(self.plan.direction or "", greater)
        value, loss = metric_at(m, self.key), metric_at(m, "val.loss")
        if value is None:
            raise ConfigError(f"hydra.sweeper.metric: {self.key!r} is not in {folder / 'metrics.json'}")
        finite = [x if x is not None and math.isfinite(x) else None for x in (value, loss)]
        return finite[0], finite[1]

    def summary(self) -> str:
        lines = [f"tune_then_test: the search on {self.key} ({'max' if self.greater_is_better else 'min'}imize), "
                 f"{len(self.groups[0].settings) * len(self.plan.search_seeds)} jobs a group"]
        for g in self.groups:
            chosen = " ".join(g.chosen) if g.chosen else "nothing finished"
            score = f" ({self.key} {g.chosen_score:.4f})" if g.chosen_score is not None else ""
            lines.append(f"  {g.name}: {chosen}{score}")
        return "\n".join(lines)
