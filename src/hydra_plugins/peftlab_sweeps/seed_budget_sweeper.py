"""``hydra/sweeper=seed_budget``: a grid sweep in two rounds: a pilot of seeds for every group, then
as many more seeds as each group's pilot spread says its 95% interval needs to reach a target
(Stein's two-stage rule: peftlab.reporting.seed_budget decides). It hands each round to whatever
launcher the sweep uses, so it composes with every launcher.

    peftlab-train -m hydra/sweeper=seed_budget method=lora,ia3 hydra.sweeper.half_width=0.02
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

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
        budget = Budget(**self.settings)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        seeds = [o for o in overrides if o.key_or_group == "seed"]  # seed=, +seed= or ++seed=
        grid = [o for o in overrides if o.key_or_group != "seed"]
        seed_values = None
        if seeds:
            s = seeds[-1]
            seed_values = list(s.sweep_string_iterator()) if s.is_sweep_override() else [s.get_value_element_as_str()]
        groups = _grid(grid)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        return run_rounds(groups, first_seeds(seed_values, budget), budget, sweep_dir, self._launch)

    def _launch(self, batch: List[List[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.launcher is not None
        self.validate_batch_is_legal(batch)
        return self.launcher.launch(batch, initial_job_idx=initial_job_idx)


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
