"""peftlab's own Lightning callbacks."""

from __future__ import annotations

import time

import lightning as L
import torch

from peftlab.memory import peak_rss_mb


class TrainingMeter(L.Callback):
    """Training wall time, tokens per second (non-padding tokens) and peak memory, for metrics.json.

    ``summary`` holds the figures after training; not to be confused with Lightning's own
    ``ThroughputMonitor``, which logs FLOP-based figures per step."""

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
