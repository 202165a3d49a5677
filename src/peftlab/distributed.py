"""Which process is which when several train one model (Lightning's DDP/FSDP children, torchrun,
SLURM), and the few collective steps peftlab itself needs. peftlab builds no launcher of its own.

Only the first process (global rank 0) writes: the run folder, its lock, the adapter,
metrics.json and the merge. The others compute and write nothing.
"""

from __future__ import annotations

import os
from typing import Any

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


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_first() -> bool:
    return not SECONDARY and rank_and_world()[0] == 0


def all_sum(value: Any) -> Any:
    """The sum of a tensor over every process (itself with one process)."""
    import torch.distributed as dist

    if rank_and_world()[1] > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` with one process)."""
    import torch.distributed as dist

    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out
