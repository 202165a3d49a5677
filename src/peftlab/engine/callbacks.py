"""peftlab's own Lightning callbacks."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from peftlab.engine.distributed import all_sum
from peftlab.errors import Diverged  # noqa: F401  (raised here; its home is errors.py, where tasks reach it)
from peftlab.runs.memory import peak_rss_mb


class TrainingMeter(L.Callback):
    """Training wall time, tokens per second (non-padding tokens), the real and padded token slots
    per batch, and peak memory, for metrics.json.

    ``summary`` holds the figures after training; not to be confused with Lightning's own
    ``ThroughputMonitor``, which logs FLOP-based figures per step."""

    def __init__(self):
        self.summary: dict[str, float] = {}
        self._tokens = self._slots = self._batches = 0
        self._start = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._tokens = self._slots = self._batches = 0
        self._start = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens += int(batch["attention_mask"].sum())
        self._slots += batch["attention_mask"].numel()
        self._batches += 1

    def on_train_end(self, trainer, pl_module) -> None:
        wall = time.perf_counter() - self._start
        tokens = self._tokens * trainer.world_size
        self.summary = {"wall_s": round(wall, 3), "tokens": tokens,
                        "tokens_per_s": round(tokens / wall, 2) if wall > 0 else 0.0,
                        "peak_rss_mb": round(peak_rss_mb(), 1)}
        if self._batches:  # this process's batches: what a step computes, and how much of it is padding
            self.summary.update(real_tokens_per_batch=round(self._tokens / self._batches, 1),
                                padded_tokens_per_batch=round(self._slots / self._batches, 1),
                                padding_share=round(1 - self._tokens / max(self._slots, 1), 4))
        if torch.cuda.is_available():
            self.summary["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


class DivergenceGuard(L.Callback):
    """Stops training at the first non-finite loss or gradient, before the optimizer applies it,
    and at the first non-finite trained weight or optimizer state after a step (a NaN that appears
    only in the update), before any checkpoint can hold it: the checkpoints written so far stay
    those of good steps. Under fp16's loss scaling a non-finite gradient is the scaler's normal
    overflow (it skips the step and lowers its scale), not divergence, unless the scale collapses."""

    MIN_SCALE = 2.0 ** -24  # a loss scale below this: every step overflows

    def __init__(self) -> None:
        self._checked_step = -1  # the optimizer step whose update was last checked

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step + 1
        scaler = _loss_scaler(trainer)
        if scaler is not None:  # fp16: the scaler skips an overflowing step itself
            if scaler.get_scale() < self.MIN_SCALE:
                raise Diverged(step, f"the fp16 loss scale fell to {scaler.get_scale():.3g}: every step overflows")
            return
        loss = getattr(pl_module, "last_loss", None)
        if loss is not None and not torch.isfinite(loss):
            raise Diverged(step, f"the training loss is {float(loss)}")
        grads = [p.grad for p in pl_module.parameters() if p.requires_grad and p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            raise Diverged(step, "the gradients are not finite")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._checked_step:  # no update since (gradient accumulation)
            return
        self._checked_step = trainer.global_step
        what = _non_finite_state(pl_module, trainer.optimizers)
        if what:
            raise Diverged(trainer.global_step, f"{what} not finite after the update")


def _loss_scaler(trainer) -> Any:
    plugin = getattr(trainer.strategy, "precision_plugin", None)
    return getattr(plugin, "scaler", None)


def _non_finite_state(module: torch.nn.Module, optimizers: list) -> str:
    """What of the trained weights and the optimizers' state holds a non-finite value ('' if none).
    Each process checks its own shards (FSDP2's DTensors) and the verdict is summed over processes,
    so that every process stops together."""
    weights = [p for p in module.parameters() if p.requires_grad]
    state = [t for opt in optimizers for per_param in opt.state.values() for t in per_param.values()
             if isinstance(t, torch.Tensor) and t.is_floating_point()]
    device = weights[0].device if weights else torch.device("cpu")
    bad = all_sum(torch.stack([_any_non_finite(weights, device), _any_non_finite(state, device)])).cpu()
    if bad[0] > 0:
        return "the trained weights are"
    if bad[1] > 0:
        return "the optimizer's state is"
    return ""


def _any_non_finite(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """1.0 where any of ``tensors`` (this process's shards of DTensors) holds inf or nan, else 0.0,
    computed on the device in one go (one synchronisation per step, not one per tensor)."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    flags = [(~torch.isfinite(t)).any().to(device) for t in local if t.numel()]
    return torch.stack(flags).any().float() if flags else torch.zeros((), device=device)


class ResumeState(L.Callback):
    """Every random generator a training step draws from, saved with each checkpoint and restored
    when a resumed fit starts. With the weights, optimizer and schedule (Lightning's) and the data
    order (the training loader's own state), a resumed run continues exactly where the interrupted
    one stopped. Saved as tensors and plain values, so checkpoints load with ``weights_only=True``."""

    def __init__(self) -> None:
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        import random

        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"torch": torch.random.get_rng_state(), "python": random.getstate(),
                 "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                           "has_gauss": int(has_gauss), "gauss": float(gauss)}}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        import random

        import numpy as np

        state, self._pending = self._pending, None
        if not state:
            return
        torch.random.set_rng_state(state["torch"])
        random.setstate(state["python"])
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
