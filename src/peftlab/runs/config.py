"""Reading a finished run's config back: the validated ``TrainSchema`` it was trained with.

A run folder is data: its ``model.trust_remote_code`` is never obeyed, and its config names method
schemas that must already be registered (``import peftlab.methods`` in the caller)."""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from peftlab.config import validate
from peftlab.config.commands import TrainSchema
from peftlab.config.instantiate import disallowed_resolvers
from peftlab.errors import ConfigError
from peftlab.runs.folders import run_status


def read_run_config(run_dir: Path, trust_remote_code: bool = False):
    """The validated config (a ``TrainSchema``) a finished run folder was trained with.

    A run folder is data: its ``model.trust_remote_code`` is never obeyed (the caller passes the
    user's own choice, the command's ``trust_remote_code=``), and a hub model it names is read from
    the local cache only."""
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
    return run
