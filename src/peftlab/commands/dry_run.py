"""``--dry-run`` on every command, and ``--cfg`` for every job of a sweep.

A dry run composes the command line with Hydra's own composition, as the command's run would (its
config folder, ``--config-dir``/``--config-name``, the plug-ins' folders), sets Hydra's runtime for
the job as Hydra's launcher sets it, and hands the config to the command's *plan* function, which
makes every check the command makes before its work, with the same functions (so the same one-line
messages), and says what the command would do. Hydra never starts a job, so no job folder, no
``.hydra/`` and no log is made; the plan functions write nothing and load no weights.

With ``-m``: every job of the grid (the basic sweeper's expansion of the command line and of
``hydra.sweeper.params``), each composed and checked as its launcher would compose it, after the
checks the sweep makes before its first job. A sweeper that chooses its jobs as it goes (optuna,
tune_then_test, seed_budget) has its search space shown, and every setting of the command line's
grid checked.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from peftlab.config import CONF_DIR
from peftlab.config.messages import describe, unchosen_group, user_errors
from peftlab.errors import ConfigError, SweepRefused

DRY_RUN = "--dry-run"
PlanFunction = Callable[[DictConfig, Path], list[tuple[str, str]]]  # (what, the line that says it)
# Hydra's flags that do something other than run: a dry run is a run that does not happen
NOT_RUNS = ("cfg", "help", "hydra_help", "info", "shell_completion")


def take_flag(argv: list[str]) -> tuple[list[str], bool]:
    """The command line without ``--dry-run``, and whether it was there (Hydra never sees it)."""
    return [a for a in argv if a != DRY_RUN], DRY_RUN in argv


def asks_for_configs(argv: list[str]) -> bool:
    """``--cfg`` (or ``-c``) on the command line."""
    return any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in argv)


def dry_run(prog: str, argv: list[str], plan: PlanFunction, before_sweep: Optional[Callable] = None) -> None:
    """Check ``prog``'s command line ``argv`` as its run would and print the plan (every job's, for a
    sweep). Raises the command's own error (one line) when a check fails; a sweep goes through every
    job first and then raises for the first job refused, saying how many others were."""
    args = _arguments(argv)
    given = [name for name in NOT_RUNS if getattr(args, name)]
    if given:
        raise ConfigError(f"{DRY_RUN}: checks a run and prints its plan; it does not combine with "
                          f"--{given[0].replace('_', '-')}")
    with _hydra(prog, args) as (hydra, name):
        cfg = _compose(hydra, name, args.overrides, args.multirun)
        if not args.multirun:
            job, out = _run_job(cfg)
            with _as_job(job):
                lines = plan(_task_config(job), out)
            print(f"{prog} {DRY_RUN}: every check passed; nothing was written and no weights were loaded")
            print(_format(lines))
            return
        if before_sweep is not None:
            from hydra.core.hydra_config import HydraConfig

            HydraConfig.instance().set_config(cfg)
            try:
                before_sweep(cfg)  # the checks a sweep makes before its first job
            except SweepRefused as refused:
                raise refused.error from None
        _dry_sweep(prog, hydra, cfg, plan)


def show_sweep_configs(prog: str, argv: list[str]) -> None:
    """``-m --cfg job|hydra|all``: each job's composed config (Hydra shows one config, not a sweep's)."""
    args = _arguments(argv)
    with _hydra(prog, args) as (hydra, name):
        cfg = _compose(hydra, name, args.overrides, True)
        header, jobs = _sweep_jobs(hydra, cfg)
        print(f"# {header}")
        for num, overrides in jobs:
            print(f"# job {num}: {' '.join(overrides) or '(no overrides)'}")
            shown = hydra.get_sanitized_cfg(_job_config(hydra, cfg, num, overrides), args.cfg)
            package = None if args.package in (None, "_global_") else args.package
            if package is not None:
                shown = OmegaConf.select(shown, package)
                print(f"# @package {package}")
            if OmegaConf.is_config(shown):
                if args.resolve:
                    OmegaConf.resolve(shown)
                shown = OmegaConf.to_yaml(shown)
            print(str(shown).rstrip("\n"))


# --------------------------------------------------------------------------------------- the jobs
def _dry_sweep(prog: str, hydra: Any, cfg: DictConfig, plan: PlanFunction) -> None:
    header, jobs = _sweep_jobs(hydra, cfg)
    word = "job" if header.startswith("the grid") else "setting"  # a sweeper that chooses numbers its own jobs
    refused: list[tuple[str, str]] = []
    blocks = []
    for num, overrides in jobs:
        label = f"{word} {num}: {' '.join(overrides) or '(no overrides)'}"
        try:
            job = _job_config(hydra, cfg, num, overrides)
            with _as_job(job):
                out = Path(job.hydra.runtime.output_dir)
                blocks.append(f"{label}\n{_format(plan(_task_config(job), out))}")
        except (*user_errors(), AssertionError) as err:
            if isinstance(err, AssertionError) and not unchosen_group(err, overrides):
                raise
            message = describe(err, overrides)
            refused.append((f"{word} {num} ({' '.join(overrides)})", message))
            blocks.append(f"{label}\n  refused: {message}")
    passed = len(jobs) - len(refused)
    print(f"{prog} -m {DRY_RUN}: {len(jobs)} {word}(s), {passed} passed every check; nothing was written and no "
          f"weights were loaded\n  {header}")
    print("\n".join(blocks))
    if refused:
        first, message = refused[0]
        others = f" ({len(refused) - 1} more {word}(s) refused: see above)" if len(refused) > 1 else ""
        raise ConfigError(f"{first}: {message}{others}")


def _sweep_jobs(hydra: Any, cfg: DictConfig) -> tuple[str, list[tuple[int, list[str]]]]:
    """(what the sweep is, [(job number, its overrides)]): the grid's jobs as the basic sweeper makes
    them. For a sweeper that chooses, its discrete choices are expanded as a grid and a range is
    checked at its low end."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = cfg.hydra.sweeper
    target = str(sweeper.get("_target_", ""))
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=hydra.config_loader)
    overrides = parser.parse_overrides([*params, *cfg.hydra.overrides.task])
    ranges = [o for o in overrides if o.is_sweep_override() and not o.is_discrete_sweep()]
    overrides = [parser.parse_override(f"{o.get_key_element()}={o.value().start}")  # type: ignore[union-attr]
                 if o in ranges else o for o in overrides]
    sweep_dir = Path(str(cfg.hydra.sweep.dir))
    if target.endswith(".BasicSweeper"):
        header = f"the grid (hydra.sweeper: BasicSweeper); sweep folder {_folder(sweep_dir)}"
    else:
        shown = {k: v for k, v in OmegaConf.to_container(sweeper, resolve=False).items()
                 if k in SEARCH_KEYS and v not in (None, {}, [])}
        header = (f"hydra.sweeper: {target.rsplit('.', 1)[-1]} chooses its jobs as it goes ({shown}); below, every "
                  "setting of its grid and of its discrete choices" + (" (ranges at their low end)" if ranges else "")
                  + f"; sweep folder {_folder(sweep_dir)}")
    grid = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    return header, list(enumerate(grid))


def _job_config(hydra: Any, cfg: DictConfig, num: int, overrides: list[str]) -> DictConfig:
    """A sweep job's config, composed as the launcher composes it, its runtime set as ``run_job`` sets it."""
    from hydra.core.hydra_config import HydraConfig

    job = hydra.config_loader.load_sweep_config(cfg, list(overrides))
    with open_dict(job):
        job.hydra.job.id = num
        job.hydra.job.num = num
    HydraConfig.instance().set_config(job)
    out = Path(str(OmegaConf.select(job, "hydra.sweep.dir"))) / str(OmegaConf.select(job, "hydra.sweep.subdir"))
    _set_output_dir(job, out)
    return job


# what a choosing sweeper's settings say of the jobs it will run (its sampler's own settings aside)
SEARCH_KEYS = ("params", "search", "group_search", "search_space", "search_seeds", "test_seeds", "n_trials",
               "direction", "metric", "half_width", "min_seeds", "max_seeds")


def _run_job(cfg: DictConfig) -> tuple[DictConfig, Path]:
    """The single run's config with its runtime set as Hydra's ``run_job`` sets it, and its folder."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    out = Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
    _set_output_dir(cfg, out)
    return cfg, out


def _set_output_dir(cfg: DictConfig, out: Path) -> None:
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = os.path.abspath(out)


@contextlib.contextmanager
def _as_job(job: DictConfig) -> Iterator[None]:
    """Hydra's state while the job's checks run: its config, and its ``hydra.job.env_set``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import env_override

    HydraConfig.instance().set_config(job)
    with env_override(dict(job.hydra.job.get("env_set") or {})):
        yield


def _task_config(job: DictConfig) -> DictConfig:
    task = copy.deepcopy(job)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _format(plan: list[tuple[str, str]]) -> str:
    from peftlab.engine.plan import format_plan

    return format_plan(plan)


def _folder(folder: Path) -> str:
    return f"{folder} ({'exists' if folder.exists() else 'would be created'})"


# -------------------------------------------------------------------------------- Hydra, composed
def _arguments(argv: list[str]) -> Any:
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(argv)


@contextlib.contextmanager
def _hydra(prog: str, args: Any) -> Iterator[tuple[Any, str]]:
    """Hydra set up as ``@hydra.main`` sets it up for the command (its search path, the
    ``--config-dir`` given), and cleared again after."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import SearchPathException

    name = prog.removeprefix("peftlab-")
    search_path = create_automatic_config_search_path(None, None, args.config_path or str(CONF_DIR))
    if args.config_dir is not None:
        folder = os.path.abspath(args.config_dir)
        if not os.path.isdir(folder):
            raise SearchPathException(f"Additional config directory '{folder}' not found")
        search_path.prepend(provider="command-line", path=f"file://{folder}", anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    try:
        yield Hydra.create_main_hydra2(task_name=name, config_search_path=search_path), args.config_name or name
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None


def _compose(hydra: Any, name: str, overrides: list[str], multirun: bool) -> DictConfig:
    """The config Hydra's run (or multirun) composes, with ``hydra.mode`` set as Hydra sets it."""
    from hydra.types import RunMode

    mode = RunMode.MULTIRUN if multirun else RunMode.RUN
    return hydra.compose_config(config_name=name, overrides=[*overrides, f"hydra.mode={mode.name}"],
                                run_mode=mode, with_log_configuration=False)
