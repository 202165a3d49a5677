"""``hydra/sweeper=seed_budget``: a grid sweep in two rounds: a pilot of seeds for every group, then
as many more seeds as each group's pilot spread says its 95% interval needs to reach a target
(Stein's two-stage rule: peftlab.reporting.seed_budget decides). It hands each round to whatever
launcher the sweep uses, so it composes with every launcher.

    peftlab-train -m hydra/sweeper=seed_budget method=lora,ia3 hydra.sweeper.half_width=0.02

Its settings, its grid, the pilot's seeds and its metric (a number every group's runs will report,
from their task's metric names) are checked before the first job, by ``check_before_sweep`` from the
sweep's first callback (peftlab.engine.train.SweepObjectiveCheck): a bad budget leaves nothing behind.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("peftlab.sweeps")


@dataclass
class SeedBudgetSweeperConf:
    _target_: str = "hydra_plugins.peftlab_sweeps.seed_budget_sweeper.SeedBudgetSweeper"
    # the grid, as the basic sweeper's (method: lora,ia3); a seed entry names the pilot's seeds
    params: Optional[Dict[str, str]] = None
    metric: Optional[str] = None  # a metrics.json key; null: the task's primary test metric
    half_width: float = 0.02  # the target: each group's 95% CI within ±half_width
    min_seeds: int = 3  # the pilot: seeds 1..min_seeds
    max_seeds: int = 10  # and never more than this many per group


ConfigStore.instance().store(group="hydra/sweeper", name="seed_budget", node=SeedBudgetSweeperConf,
                             provider="peftlab")


class SeedBudgetSweeper(Sweeper):
    def __init__(self, params: Optional[Dict[str, str]] = None, metric: Optional[str] = None,
                 half_width: float = 0.02, min_seeds: int = 3, max_seeds: int = 10) -> None:
        self.params = dict(params or {})
        self.settings = dict(metric=metric, half_width=half_width, min_seeds=min_seeds, max_seeds=max_seeds)
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> List[Sequence[JobReturn]]:
        from peftlab.reporting.seed_budget import Budget, first_seeds, run_rounds

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        budget = Budget(**self.settings)  # checked before the first job already (check_before_sweep)
        groups, seed_values = _plan(self.params, arguments, self.hydra_context.config_loader)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        return run_rounds(groups, first_seeds(seed_values, budget), budget, sweep_dir, self._launch)

    def _launch(self, batch: List[List[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.launcher is not None
        self.validate_batch_is_legal(batch)
        return self.launcher.launch(batch, initial_job_idx=initial_job_idx)


def _plan(params: Dict[str, str], arguments: Sequence[str], config_loader: Any = None
          ) -> tuple[List[List[str]], Optional[List[str]]]:
    """The grid's groups (each a list of overrides, the seed left out) and the seeds it names (None:
    the pilot's default seeds)."""
    parser = OverridesParser.create(config_loader=config_loader)
    overrides = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + list(arguments))
    seeds = [o for o in overrides if o.key_or_group == "seed"]  # seed=, +seed= or ++seed=
    grid = [o for o in overrides if o.key_or_group != "seed"]
    seed_values = None
    if seeds:
        s = seeds[-1]
        seed_values = list(s.sweep_string_iterator()) if s.is_sweep_override() else [s.get_value_element_as_str()]
    return _grid(grid), seed_values


def check_before_sweep(config: DictConfig) -> None:
    """Everything the seed budget can check before its first job, from the sweep's config: its
    settings, its grid, the pilot's seeds, and that each group's runs will report its metric (each
    group's config composed as its jobs' will be). Raises a ConfigError; writes nothing."""
    from hydra.core.global_hydra import GlobalHydra

    from peftlab.errors import ConfigError
    from peftlab.reporting.seed_budget import Budget, first_seeds

    s = config.hydra.sweeper
    budget = Budget(metric=s.get("metric"), half_width=s.get("half_width"), min_seeds=s.get("min_seeds"),
                    max_seeds=s.get("max_seeds"))
    groups, seed_values = _plan(dict(s.get("params") or {}), list(config.hydra.overrides.task))
    seeds = first_seeds(seed_values, budget)
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    shared = set.intersection(*(set(g) for g in groups))  # what every group sets: not part of a group's name
    for group in groups:
        job = config
        if loader is not None:
            try:
                job = loader.load_sweep_config(config, [*group, f"seed={seeds[0]}"])
            except Exception:  # a group that does not compose: its jobs say why, as in any sweep
                continue
        problem = metric_problem(job, budget.metric, " ".join(o for o in group if o not in shared))
        if problem:
            raise ConfigError(problem)


FORGETTING_NUMBERS = ("loss_before", "loss_after", "delta", "delta_ci95")


def reported_numbers(job: DictConfig) -> List[str]:
    """The dotted metrics.json numbers a run of this composed config reports: its task's metrics on
    each split it scores (as an objective's are found), the numbers of every run, and the forgetting
    measurement's where it is taken."""
    from peftlab.engine.train import RUN_NUMBERS
    from peftlab.tasks import task_class

    task = task_class(str(job.data.task_type))
    splits = [name for name, on in (("val", job.trainer.get("limit_val_batches") != 0), ("test", job.get("test", True)),
                                    ("zero_shot", job.get("zero_shot", True))) if on]
    known = [f"{split}.{m}" for split in splits for m in task.metric_names]
    if job.get("forgetting") is not None and task.generative:
        known += [f"forgetting.{k}" for k in FORGETTING_NUMBERS]
    return known + list(RUN_NUMBERS)


def metric_problem(job: DictConfig, metric: Optional[str], group: str = "") -> Optional[str]:
    """Why the runs of ``job`` (one group's composed config) would not report the budget's metric."""
    from peftlab.tasks import task_class

    known = reported_numbers(job)
    key = metric or f"test.{task_class(str(job.data.task_type)).primary_metric}"
    if key in known:
        return None
    runs = f"the runs of {group}" if group else "the runs"
    said = repr(metric) if metric else f"null (the primary test metric, {key})"
    return f"hydra.sweeper.metric: {said} is not a number {runs} report (known: {', '.join(known)})"


def _grid(overrides: list) -> List[List[str]]:
    """Every combination of the swept values, as the basic sweeper makes them (a later value of the
    same key, from the command line, replaces the config's); the seed is not part of it."""
    from peftlab.errors import ConfigError

    values: Dict[str, List[str]] = {}
    for o in overrides:
        key = o.get_key_element()
        if o.is_sweep_override() and not o.is_discrete_sweep():
            raise ConfigError(f"{key}: the seed budget sweeps lists of values (a,b,c), not {o.value_type.name}")
        values[key] = ([f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
                       else [f"{key}={o.get_value_element_as_str()}"])
    return [list(combination) for combination in itertools.product(*values.values())]
