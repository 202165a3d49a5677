"""Checkpoints: written atomically, and read as data (``weights_only=True``: tensors and plain values
only; nothing in a checkpoint is unpickled as code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io import TorchCheckpointIO

from peftlab.errors import ConfigError
from peftlab.runs.files import atomic_path


class SafeCheckpointIO(TorchCheckpointIO):
    """Checkpoints written under a temporary name and renamed (a kill mid-write leaves the previous
    file whole), and read with ``weights_only=True``: a checkpoint holds tensors and plain values,
    and nothing in one is unpickled as code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(path), overwrite=True) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None, weights_only: Optional[bool] = None):
        return super().load_checkpoint(path, map_location=lambda storage, loc: storage, weights_only=True)


def read_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint file read as data (``weights_only=True``: tensors and plain values only)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many types for files that are not checkpoints
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ConfigError(f"resume_from: {path} is not a checkpoint peftlab can read ({first[:200]})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "global_step" not in checkpoint:
        raise ConfigError(f"resume_from: {path} is not a Lightning checkpoint of a peftlab run (no state_dict)")
    return checkpoint
