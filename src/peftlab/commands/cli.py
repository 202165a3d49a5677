"""The shell every console script runs in: user mistakes become one line on stderr and exit
status 2; anything else is a bug and keeps its traceback.

Before Hydra starts (and writes anything), the command line is checked: an explicit
``hydra.run.dir`` must not hold a finished run and is locked for this process, and a rerun file
given with ``--config-dir <run folder> --config-name rerun`` is read as data first: Hydra would
otherwise instantiate what it names (its own callbacks, logging handlers) before peftlab sees it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

# the plug-ins register before any config is composed or read: Hydra composes the method schemas
# from its ConfigStore, and a run's config validates against the registered task types
import peftlab.methods  # noqa: F401
import peftlab.tasks  # noqa: F401
from hydra_plugins.peftlab_sweeps import register as _register_sweep_plugins
from peftlab.config import CONF_DIR
from peftlab.config.messages import describe, unchosen_group, user_errors
from peftlab.config.user_plugins import check_loaded, command_line_plugins
from peftlab.config.user_plugins import load as load_plugins
from peftlab.engine.distributed import SECONDARY, launched_world_size
from peftlab.errors import ConfigError, SweepRefused
from peftlab.runs.folders import check_claimable, claim_run_dir, discard_unstarted_run_dir, resuming_into
from peftlab.runs.rerun import check_rerun_file

__all__ = ["CONF_DIR", "run_app", "output_dir"]

_register_sweep_plugins()  # hydra/launcher=process, hydra/sweeper=seed_budget, the plug-ins' config folders


# the folder Hydra made for this process's single run when the command line named none (its
# timestamped default): a failed start removes what was written there, as for a named one
_DEFAULT_FOLDER: list[Path] = []


def output_dir() -> Path:
    """The folder Hydra gave this job (its run or sweep-job folder)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    folder = Path(hc.runtime.output_dir)
    named = any(o.lstrip("+~").startswith("hydra.run.dir=") for o in hc.overrides.hydra)
    fresh = folder.is_dir() and {p.name for p in folder.iterdir()} <= {".hydra", f"{hc.job.name}.log"}
    if hc.mode.name == "RUN" and hc.output_subdir is not None and not named and fresh:  # made for this job now
        _DEFAULT_FOLDER[:] = [folder]
    return folder


def _explicit_run_dir(argv: list[str], claim: bool = True) -> Optional[Path]:
    """``hydra.run.dir=<folder>`` (``hydra.sweep.dir=`` for a sweep): claimed (checked and locked)
    before Hydra writes into it; only checked when not ``claim`` (a dry run). Returns the run folder,
    which a failed start cleans up."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = None
    for arg in argv:
        if arg.lstrip("+").startswith(key + "="):  # hydra.run.dir=, +hydra.run.dir=, ++hydra.run.dir=
            folder = Path(arg.split("=", 1)[1])
    if folder is None:
        if launched_world_size() > 1 and not multirun:
            raise ConfigError("hydra.run.dir: give the run folder when torchrun or srun starts the processes "
                              "(each would pick its own timestamped folder otherwise)")
        return None
    resuming = not multirun and resuming_into(folder, argv)
    if not claim:
        check_claimable(folder, key, resuming)
        return None
    claim_run_dir(folder, key, resuming=resuming)
    return None if multirun else folder


class _QuietJobFailure:
    """stderr without Hydra's "Error executing job with overrides" line, which repeats the
    command line of a single run before peftlab's own one-line message."""

    def __init__(self, stream: Any):
        self.stream = stream

    def write(self, text: str) -> int:
        if text.startswith("Error executing job with overrides"):
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def run_app(hydra_main: Callable[[], object], prog: str,
            prepare_argv: Optional[Callable[[list[str]], list[str]]] = None,
            plan: Optional[Callable[[Any, Path], list[tuple[str, str]]]] = None,
            before_sweep: Optional[Callable[[Any], None]] = None) -> None:
    """Run a ``@hydra.main`` function as the console script ``prog``. With ``--dry-run``, ``plan``
    (the command's checks, then what it would do; ``before_sweep``: what a sweep checks before its
    first job) runs instead, on the config Hydra composes (commands/dry_run.py)."""
    from peftlab.commands.dry_run import asks_for_configs, take_flag

    os.environ["HYDRA_FULL_ERROR"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    sys.argv[1:], dry = take_flag(sys.argv[1:])
    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    stderr = sys.stderr
    if not multirun:
        sys.stderr = _QuietJobFailure(stderr)
    held = None
    try:
        if SECONDARY and not dry:  # a second process of a distributed run: the first holds the folder and writes it
            load_plugins(sys.argv[1:])
            sys.argv[1:] = [*sys.argv[1:], "hydra/job_logging=stdout", "hydra.output_subdir=null"]
        else:
            load_plugins(sys.argv[1:])  # the user's own code: installed entry points, plugins=[...]
            if prepare_argv is not None:  # resume=: a run folder's plug-ins are checked, never loaded
                sys.argv[1:] = prepare_argv(sys.argv[1:])
                check_loaded(command_line_plugins(sys.argv[1:]), "resume: the run's plugins")
            check_rerun_file(sys.argv[1:])
            if multirun and not asks_for_configs(sys.argv[1:]):  # the launcher's package, what it can start
                check_launcher(prog, sys.argv[1:])
            if dry or (multirun and asks_for_configs(sys.argv[1:])):
                _without_hydras_job(prog, dry, plan, before_sweep)
                return
            held = _explicit_run_dir(sys.argv[1:])
        try:
            hydra_main()
        except SweepRefused as refused:  # from a Hydra callback, before the sweep's first job
            raise refused.error from None
    except (*user_errors(), AssertionError) as err:
        if isinstance(err, AssertionError) and not unchosen_group(err, sys.argv[1:]):
            raise  # a bug, not the user's
        for folder in [held] if held is not None else _DEFAULT_FOLDER:
            discard_unstarted_run_dir(folder)  # this process's folder: what it wrote for a run that never started
        print(f"{prog}: error: {describe(err, sys.argv[1:])}", file=stderr)
        sys.exit(2)
    finally:
        sys.stderr = stderr


def _without_hydras_job(prog: str, dry: bool, plan: Optional[Callable], before_sweep: Optional[Callable]) -> None:
    """``--dry-run``, and ``-m --cfg`` (each job's config): composed as Hydra composes, no job started."""
    from peftlab.commands.dry_run import DRY_RUN, dry_run, show_sweep_configs

    if not dry:
        show_sweep_configs(prog, sys.argv[1:])
        return
    if plan is None:
        raise ConfigError(f"{DRY_RUN}: {prog} has no dry run")
    _explicit_run_dir(sys.argv[1:], claim=False)
    dry_run(prog, sys.argv[1:], plan, before_sweep)


# ------------------------------------------------------------------- before a sweep's first job
def check_launcher(prog: str, argv: list[str]) -> None:
    """Before a sweep starts (``-m``, run or dry run), and before anything is written: the launcher's
    package is installed, and no job asks for processes its launcher cannot start (each job composed as
    the launcher will compose it). A sweep whose jobs do not compose is left to Hydra, which says why."""
    from peftlab.commands.dry_run import _compose, _hydra, _job_config, _sweep_jobs
    from peftlab.runs.launcher import distributed_refusal, launcher_choice, missing_launcher_package

    missing = missing_launcher_package(launcher_choice(argv))
    if missing:
        raise ConfigError(missing)
    args = _quiet_arguments(argv)
    if args is None:  # a command line Hydra's parser refuses: the command's own checks say why
        return
    refused = []
    with _hydra(prog, args) as (hydra, name):
        try:
            cfg = _compose(hydra, name, args.overrides, True)
            launcher = str(cfg.hydra.runtime.choices.get("hydra/launcher"))
            target = str(cfg.hydra.launcher.get("_target_", ""))
            seen: dict[tuple[str, ...], Optional[str]] = {}
            for num, overrides in _sweep_jobs(hydra, cfg)[1]:
                layout = _layout_overrides(hydra, overrides)  # jobs that differ by seed share a layout
                if layout not in seen:
                    hardware = _job_config(hydra, cfg, num, list(layout)).get("hardware")
                    seen[layout] = distributed_refusal(hardware, launcher, target) if hardware is not None else None
                if seen[layout]:
                    refused.append(f"job {num} ({' '.join(overrides)}): {seen[layout]}")
        except (*user_errors(), AssertionError, ValueError):
            return
    if refused:
        others = f" ({len(refused) - 1} more job(s) refused alike)" if len(refused) > 1 else ""
        raise ConfigError(refused[0] + others)


def _quiet_arguments(argv: list[str]) -> Any:
    """Hydra's parse of ``argv`` (options may stand between the overrides), or None where it fails."""
    from hydra._internal.utils import get_args_parser

    def refuse(message: str) -> None:
        raise ValueError(message)

    parser = get_args_parser()
    parser.error = refuse  # type: ignore[method-assign]  # argparse would print and exit
    try:
        return parser.parse_intermixed_args(argv)
    except (ValueError, TypeError):
        return None


def _layout_overrides(hydra: Any, overrides: list[str]) -> tuple[str, ...]:
    """The overrides that can change a job's hardware: its config group choices and ``hardware.*`` values."""
    repository = hydra.config_loader.repository
    kept = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.split(".", 1)[0] == "hardware" or "@" in key or repository.group_exists(key):
            kept.append(override)
    return tuple(kept)
