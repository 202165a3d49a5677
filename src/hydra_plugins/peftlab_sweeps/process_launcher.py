"""``hydra/launcher=process``: a local sequential launcher that runs every job in a fresh process.

Hydra's basic launcher runs every job of a sweep in the sweep's own process, so what one job leaves
behind (allocator arenas, caches, fragmentation) is there when the next one starts and its peak
memory grows with the jobs before it. Here each job is a new Python process (``spawn``), so its peak
is its own, and a job that dies (killed, out of memory, a crash in native code) is recorded as failed
while the sweep goes on. The price is one interpreter start and the imports per job (a few seconds:
docs/guides/sweeps-and-reports.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class ProcessLauncherConf:
    _target_: str = "hydra_plugins.peftlab_sweeps.process_launcher.ProcessLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="process", node=ProcessLauncherConf, provider="peftlab")


class ProcessLauncher(Launcher):
    def __init__(self) -> None:
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from peftlab.runs.launcher import launch_in_processes

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        return launch_in_processes(self.hydra_context, self.task_function, self.config, job_overrides,
                                   initial_job_idx)
