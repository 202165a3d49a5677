"""A Lightning callback that misbehaves on purpose, for the sweep launcher tests (given on the
command line as +callbacks.odd._target_=sweep_callbacks.Misbehave, with tests/ on PYTHONPATH)."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl
import torch

KEPT: list[torch.Tensor] = []  # what a leaking job leaves behind in its process


class Misbehave(pl.Callback):
    """At the start of training: ``leak`` allocates 400 MiB and never lets go of it; ``die`` kills its
    own process, as the kernel's out-of-memory killer would; ``none`` does nothing."""

    def __init__(self, mode: str = "none"):
        self.mode = mode

    def on_train_start(self, trainer, pl_module) -> None:
        if self.mode == "leak":
            KEPT.append(torch.ones(400 * 2**20 // 4))
        elif self.mode == "die":
            os.kill(os.getpid(), signal.SIGKILL)
