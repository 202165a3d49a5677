"""Which process is which when several train one model (Lightning's DDP/FSDP children, torchrun,
SLURM), the few collective steps peftlab itself needs, and how many threads a job of a parallel
sweep takes. peftlab builds no launcher of its own.

Only the first process (global rank 0) writes: the run folder, its lock, the adapter,
metrics.json and the merge. The others compute and write nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch

_LAUNCH_KEYS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def _secondary_at_start() -> bool:
    """True in a process that a launcher started as other than the first: read from the
    environment as it was when this process started (Lightning later sets LOCAL_RANK=0 in the first)."""
    return any(int(os.environ.get(key) or 0) > 0 for key in _LAUNCH_KEYS)


SECONDARY = _secondary_at_start()


def launched_world_size() -> int:
    """How many processes a launcher started this run with (1 when none did)."""
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 1


def all_sum(value: Any) -> Any:
    """The sum of a tensor over every process (itself with one process)."""
    import torch.distributed as dist

    from peftlab.data.loaders import rank_and_world

    if rank_and_world()[1] > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` with one process)."""
    import torch.distributed as dist

    from peftlab.data.loaders import rank_and_world

    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def threads_per_parallel_job() -> Optional[int]:
    """Under a launcher that runs jobs side by side (joblib), each job's share of the cores, so that
    the jobs do not oversubscribe them; None otherwise (torch's default)."""
    from peftlab.runs.sweeps import in_multirun

    if not in_multirun():
        return None
    from hydra.core.hydra_config import HydraConfig

    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if not n_jobs or n_jobs == 1:
        return None
    cores = os.cpu_count() or 1
    parallel = cores if n_jobs < 0 else min(n_jobs, cores)
    return max(1, cores // parallel)


def full_state_dict(model: torch.nn.Module) -> Optional[dict[str, torch.Tensor]]:
    """The whole state dict of a model sharded by FSDP2 (gathered from every process onto the CPU of
    each), for saving; None for a model that is not sharded (it saves its own)."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
