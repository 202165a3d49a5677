"""One process per job: the work of ``hydra/launcher=process`` (hydra_plugins/peftlab_sweeps).

The parent composes each job's config as Hydra's basic launcher does, then starts a fresh Python
process (``spawn``: nothing of the parent's heap, threads or CUDA state is inherited) that runs the
job with Hydra's own ``run_job`` (its folder, its log file, the callbacks) and sends the outcome
back. A job whose process dies without answering is recorded as failed (``failed.json`` and the
sweep index) and the sweep goes on.
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Any, Optional, Sequence

import cloudpickle
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from peftlab.runs.sweeps import record_lost_job

log = logging.getLogger("peftlab.sweeps")


def launch_in_processes(hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig,
                        job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info("Launching %d jobs locally, one process each", len(job_overrides))
    returns = []
    for num, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = num
            sweep_config.hydra.job.num = num
        returns.append(_run_in_process(hydra_context, task_function, sweep_config))
    return returns


def _run_in_process(hydra_context: HydraContext, task_function: TaskFunction, sweep_config: DictConfig) -> JobReturn:
    # cloudpickle: the task function is the one @hydra.main wrapped, which plain pickle cannot find by name
    from peftlab.config.user_plugins import loaded

    # the plug-ins the sweep's own command line and environment loaded, by name: the job imports the same
    payload = cloudpickle.dumps((hydra_context, task_function, sweep_config, Singleton.get_state(), loaded()))
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_job_process, args=(payload, sender), name=f"job-{sweep_config.hydra.job.num}")
    answer = None
    try:
        process.start()
        sender.close()
        answer = cloudpickle.loads(receiver.recv_bytes())
    except (EOFError, OSError):  # the process ended without answering, or in the middle of its answer
        pass
    except Exception as err:  # an answer that cannot be read back: the job is recorded as lost
        log.error("job %s: its answer could not be read (%s: %s)", sweep_config.hydra.job.num, type(err).__name__, err)
    finally:  # on Ctrl-C too: the job goes down with the sweep, and no process is left behind
        receiver.close()
        if process.pid is not None:  # started: wait for it to end (a minute after answering), else end it
            process.join(timeout=60 if answer is not None else 5)
            if process.is_alive():
                process.kill()
                process.join()
    if answer is not None:
        return answer
    # Hydra leaves the sweep folder and sub-folder as interpolations until the job's process resolves them
    run_dir = (Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)).resolve()
    error = RuntimeError(f"job {sweep_config.hydra.job.num} ended without an answer (exit code {process.exitcode}: "
                         f"{_exit_reason(process.exitcode)})")
    log.error("%s; its folder: %s", error, run_dir)
    record_lost_job(sweep_config, run_dir, error)
    # as a job that raises in peftlab-train: recorded, NaN for the sweeper (optuna counts a failed trial), and
    # the sweep goes on; it ends with a non-zero exit (runs/sweeps.py)
    return JobReturn(overrides=list(sweep_config.hydra.overrides.task), cfg=sweep_config, working_dir=str(run_dir),
                     task_name=sweep_config.hydra.job.name, status=JobStatus.COMPLETED, _return_value=float("nan"))


def _exit_reason(code: Any) -> str:
    import signal

    if isinstance(code, int) and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (the system may have run out of memory)" if name == "SIGKILL" else "")
    return "exited before the job could report"


def _job_process(payload: bytes, sender: Any) -> None:
    """The job's own process: Hydra's globals as the parent had them, then Hydra's ``run_job``."""
    from peftlab.config.user_plugins import restore

    hydra_context, task_function, sweep_config, singleton_state, plugins = cloudpickle.loads(payload)
    restore(plugins)
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    ret = run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    try:
        answer = cloudpickle.dumps(ret)
        cloudpickle.loads(answer)  # an exception whose arguments do not rebuild it fails here, not in the sweep
    except Exception as err:  # an unpicklable return value or exception: send what can travel
        value = ret._return_value
        ret._return_value = RuntimeError(f"{type(value).__name__}: {value}") if ret.status == JobStatus.FAILED else None
        log.warning("job result could not be sent back whole (%s)", err)
        answer = cloudpickle.dumps(ret)
    sender.send_bytes(answer)
    sender.close()


# ------------------------------------------------------------------- what a sweep's launcher needs
# hydra/launcher=<name>: the modules it imports, and the package that brings them (the `sweeps` extra)
LAUNCHER_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "joblib": (("hydra_plugins.hydra_joblib_launcher", "joblib"), "hydra-joblib-launcher"),
    "submitit_local": (("hydra_plugins.hydra_submitit_launcher", "submitit"), "hydra-submitit-launcher"),
    "submitit_slurm": (("hydra_plugins.hydra_submitit_launcher", "submitit"), "hydra-submitit-launcher"),
    "slurm": (("hydra_plugins.hydra_submitit_launcher", "submitit"), "hydra-submitit-launcher"),
    "ray": (("hydra_plugins.hydra_ray_launcher", "ray"), "hydra-ray-launcher"),
}

# why a launcher cannot host a job of several processes: Lightning starts a job's other processes by
# running the command line of the process the job runs in again, with a rank in the environment
_ONE_PROCESS = {
    "ray": "a Ray task is one process, and Lightning would start the others by re-running the Ray worker's "
           "command line",
    "submitit_local": "submitit's local executor runs each job as one process, and Lightning would start the "
                      "others by re-running submitit's job runner, which runs the whole job again in the same folder",
}
_SWEEP_COMMAND = "Lightning would start the others by re-running the whole sweep's command line"


def launcher_choice(argv: Sequence[str]) -> Optional[str]:
    """The ``hydra/launcher=<name>`` the command line chooses (the last one), if any."""
    names = [a.split("=", 1)[1] for a in argv if a.lstrip("+~").removeprefix("override ").startswith("hydra/launcher=")]
    return names[-1] if names else None


def missing_launcher_package(name: Optional[str]) -> Optional[str]:
    """One line naming what to install when ``hydra/launcher=<name>`` needs a package that is not installed."""
    import importlib.util

    if name not in LAUNCHER_PACKAGES:
        return None
    modules, package = LAUNCHER_PACKAGES[name]
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package that is not there either
            found = False
        if not found:
            return (f"hydra/launcher={name} needs the {package} package ({module} is not installed): "
                    f"pip install '{package}' (or peftlab's sweeps extra: pip install -e '.[sweeps]')")
    return None


def several_processes(hardware: Any) -> bool:
    """A hardware layout whose job starts more than one process (DDP, FSDP, several devices or nodes)."""
    devices = hardware.get("devices")
    return (hardware.get("strategy") in ("ddp", "fsdp") or int(hardware.get("num_nodes") or 1) > 1
            or (isinstance(devices, int) and devices > 1))


def distributed_refusal(hardware: Any, launcher: str, launcher_target: str) -> Optional[str]:
    """Why the job of ``hardware`` cannot run under ``hydra/launcher=<launcher>`` (one line), or None:
    only SLURM's launcher starts a job's processes itself (one SLURM task each)."""
    if not several_processes(hardware) or launcher_target.endswith("SlurmLauncher"):
        return None
    why = _ONE_PROCESS.get(launcher, f"each job runs in one process, and {_SWEEP_COMMAND}")
    return (f"hardware={hardware.get('name')} under -m with hydra/launcher={launcher}: a distributed job needs "
            f"{_processes(hardware)}; {why}. Use hydra/launcher=submitit_slurm (one SLURM task per process), "
            "or run the jobs one by one without -m")


def _processes(hardware: Any) -> str:
    devices = hardware.get("devices")
    return f"{devices} processes" if isinstance(devices, int) and devices > 1 else "a process per device"
