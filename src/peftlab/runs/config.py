"""Reading a finished run's config back: the validated ``TrainSchema`` it was trained with.

A run folder is data: its ``model.trust_remote_code`` is never obeyed, and its config names method
schemas that must already be registered (``import peftlab.methods`` in the caller)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from peftlab.config import validate
from peftlab.config.commands import TrainSchema
from peftlab.config.instantiate import disallowed_resolvers
from peftlab.config.schema import ModelSchema
from peftlab.errors import ConfigError
from peftlab.runs.folders import run_status


def read_run_config(run_dir: Path, trust_remote_code: bool = False):
    """The validated config (a ``TrainSchema``) a finished run folder was trained with.

    A run folder is data: its ``model.trust_remote_code`` is never obeyed (the caller passes the
    user's own choice, the command's ``trust_remote_code=``), and a hub model or data set it names is
    read from the local cache only."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if run_status(run_dir) == "diverged":
        raise ConfigError(f"run_dir: {run_dir} diverged during training (see its metrics.json): it has no adapter")
    if not path.is_file() or not (run_dir / "adapter").is_dir():
        raise ConfigError(f"run_dir: {run_dir} is not a finished peftlab-train run folder "
                          "(it needs config.yaml and adapter/)")
    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, ValueError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ConfigError(f"run_dir: {path} is not a readable run config ({first})") from None
    if not isinstance(cfg, dict) and not OmegaConf.is_dict(cfg):
        raise ConfigError(f"run_dir: {path} is not a readable run config (not a mapping)")
    bad = disallowed_resolvers(OmegaConf.to_container(cfg, resolve=False), "")
    if bad:  # peftlab writes config.yaml resolved: an interpolation that reads anything came from elsewhere
        raise ConfigError(f"run_dir: {path}: {bad[0]}")
    try:
        run = validate(cfg, TrainSchema)
    except ConfigError as err:
        raise ConfigError(f"run_dir: {path}: {err}") from None
    run.model.trust_remote_code = trust_remote_code
    run.model.local_files_only = True  # a hub model it names comes from the local cache, never the network
    run.data.local_files_only = True  # and so does a hub data set
    return run


def base_identity(model_cfg: ModelSchema) -> dict[str, Any]:
    """What identifies a base model's weights: not the switches a reader sets (remote code, local
    files), nor what peftlab says the model serves or how it trains (task types, checkpointing)."""
    import dataclasses

    reader = ("trust_remote_code", "local_files_only", "tasks", "gradient_checkpointing")
    return {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in reader}


def read_adapter_config(folder: Path, key: str = "runs") -> dict[str, Any]:
    """A saved adapter's ``adapter_config.json`` (``key``: the setting that named the folder, for errors)."""
    path = Path(folder) / "adapter_config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}: {path} is not a readable adapter config ({str(err).splitlines()[0]})") from None
