"""peftlab's own Lightning callbacks."""

from __future__ import annotations

import ctypes
import re
import resource
import sys
import time
from pathlib import Path

import lightning as L
import torch


_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Start a new peak-memory measurement: on Linux the kernel's high-water mark (VmHWM) is reset
    to the current resident size, so that each job of a sequential sweep, which shares one process
    with the jobs before it, reports its own peak. Returns False where that is not possible."""
    try:  # first hand freed heap memory back to the system, so earlier jobs' garbage is not counted
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory in MiB since the last ``reset_peak_rss`` (or since the process began)."""
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
        if found:
            return int(found.group(1)) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class ThroughputMonitor(L.Callback):
    """Training wall time, tokens per second (non-padding tokens) and peak memory.

    ``summary`` holds the figures after training; ``train/tokens_per_s`` is also logged."""

    def __init__(self):
        self.summary: dict[str, float] = {}
        self._tokens = 0
        self._start = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._tokens, self._start = 0, time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens += int(batch["attention_mask"].sum())

    def on_train_end(self, trainer, pl_module) -> None:
        wall = time.perf_counter() - self._start
        tokens = self._tokens * trainer.world_size
        self.summary = {"wall_s": round(wall, 3), "tokens": tokens,
                        "tokens_per_s": round(tokens / wall, 2) if wall > 0 else 0.0,
                        "peak_rss_mb": round(peak_rss_mb(), 1)}
        if torch.cuda.is_available():
            self.summary["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
