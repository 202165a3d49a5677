"""``hydra/sweeper=tune_then_test``: a fair comparison. Every group of the grid (the swept settings:
``recipe=lora,ia3,full``) searches the same number of settings on the validation split, at search
seeds; each group's best setting then runs at fresh test seeds, scored on the test split once
(peftlab.reporting.protocol does the work). Each round goes to whatever launcher the sweep uses.

    peftlab-train -m hydra/sweeper=tune_then_test recipe=lora,ia3 \\
        "+hydra.sweeper.search={optim.lr: 'x0.3,x1,x3'}"
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class TuneThenTestSweeperConf:
    _target_: str = "hydra_plugins.peftlab_sweeps.tune_then_test_sweeper.TuneThenTestSweeper"
    # the groups compared, as the basic sweeper's grid (recipe: lora,ia3,full)
    params: Optional[Dict[str, str]] = None
    # every group's search space: {optim.lr: "x0.3,x1,x3"}; x<f> is f times the group's own value
    search: Any = None
    # a group's own space instead, by its name ("recipe=full": {optim.lr: "1e-5,3e-5,1e-4"}): the same size
    group_search: Any = None
    search_seeds: List[int] = field(default_factory=lambda: [1])
    test_seeds: List[int] = field(default_factory=lambda: [2, 3, 4])  # fresh seeds, scored on the test split
    metric: Optional[str] = None  # the validation metric that chooses; null: val.<primary metric>
    direction: Optional[str] = None  # maximize | minimize; null: the task's (minimize a loss)
    # equivalence margins stated before the runs ({test.exact_match: 0.03}): the report's TOST reads them
    margins: Any = None


ConfigStore.instance().store(group="hydra/sweeper", name="tune_then_test", node=TuneThenTestSweeperConf,
                             provider="peftlab")


class TuneThenTestSweeper(Sweeper):
    def __init__(self, params: Optional[Dict[str, str]] = None, search: Optional[Dict[str, Any]] = None,
                 group_search: Any = None, search_seeds: Optional[List[int]] = None,
                 test_seeds: Optional[List[int]] = None, metric: Optional[str] = None,
                 direction: Optional[str] = None, margins: Optional[Dict[str, float]] = None) -> None:
        self.params = dict(params or {})
        self.settings = dict(search=_plain(search), group_search=_plain(group_search),
                             search_seeds=_plain([1] if search_seeds is None else search_seeds),
                             test_seeds=_plain([2, 3, 4] if test_seeds is None else test_seeds),
                             metric=metric, direction=direction, margins=_plain(margins))
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> List[Sequence[JobReturn]]:
        from hydra_plugins.peftlab_sweeps.seed_budget_sweeper import _grid
        from peftlab.errors import ConfigError
        from peftlab.reporting.protocol import GroupPlan, Plan, Protocol, parse_groups, parse_space

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        s = self.settings
        for key in ("search_seeds", "test_seeds"):
            if not isinstance(s[key], list):
                raise ConfigError(f"hydra.sweeper.{key} must be a list of seeds ([2, 3, 4]), got {s[key]!r}")
        plan = Plan(search=parse_space("hydra.sweeper.search", s["search"] or {}),
                    group_search={g: parse_space(f"hydra.sweeper.group_search.{g}", space)
                                  for g, space in parse_groups(s["group_search"] or {}).items()},
                    search_seeds=s["search_seeds"], test_seeds=s["test_seeds"], metric=s["metric"],
                    direction=s["direction"], margins=parse_groups(s["margins"] or {}, "margins"),
                    tune_on_test=bool(self.config.get("tune_on_test")))
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        if any(o.key_or_group == "seed" for o in overrides):
            raise ConfigError("seed: tune_then_test runs hydra.sweeper.search_seeds, then hydra.sweeper.test_seeds; "
                              "give those instead")
        swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
        groups = [GroupPlan(g, {}, shown=[o for o in g if o.split("=", 1)[0] in swept]) for g in _grid(overrides)]
        names = [g.name for g in groups]
        for name in plan.group_search:
            if name not in names:
                raise ConfigError(f"hydra.sweeper.group_search: {name!r} is not a group of this sweep (its groups: "
                                  f"{', '.join(names)})")
        for g in groups:
            g.space = plan.group_search.get(g.name, plan.search)
            g.resolve(self._own_value)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        protocol = Protocol(plan, groups, sweep_dir)  # every check before the folder is written
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        return protocol.run(self._launch)

    def _own_value(self, overrides: List[str], key: str) -> Any:
        """The group's composed value of ``key`` (its recipe's learning rate, say)."""
        assert self.hydra_context is not None and self.config is not None
        composed = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        return OmegaConf.select(composed, key)

    def _launch(self, batch: List[List[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.launcher is not None
        self.validate_batch_is_legal(batch)
        return self.launcher.launch(batch, initial_job_idx=initial_job_idx)


def _plain(node: Any) -> Any:
    """A config node as plain Python (what the plan checks, with one line for each mistake)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
