"""``<run_dir>/rerun.yaml``: the composed config of a run as a primary config, so that
``peftlab-train --config-dir <run_dir> --config-name rerun`` runs it again into a new folder; and
reading such a file as data before Hydra does (Hydra would instantiate what it names)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from peftlab.config.instantiate import disallowed_targets
from peftlab.errors import ConfigError
from peftlab.runs.files import atomic_path

RERUN = "rerun.yaml"
RERUN_DEFAULTS = ["schema_train", {"hydra": "default"}, "_self_"]  # what peftlab writes into rerun.yaml


def write_rerun_config(cfg: DictConfig, run_dir: Path) -> None:
    """``<run_dir>/rerun.yaml``: the composed config with its interpolations, as a primary config.
    ``peftlab-train --config-dir <run_dir> --config-name rerun`` runs it again into a new folder."""
    body = OmegaConf.to_yaml(cfg)
    header = ("# Re-run this run into a new folder:\n"
              f"#   peftlab-train --config-dir {run_dir} --config-name rerun\n"
              "defaults:\n  - schema_train\n  - hydra: default\n  - _self_\n\n")
    with atomic_path(run_dir / RERUN, overwrite=True) as tmp:
        tmp.write_text(header + body)


def _option(argv: list[str], *names: str) -> Optional[str]:
    """The value of ``--name value`` / ``--name=value`` on the command line."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def check_rerun_file(argv: list[str]) -> None:
    """A rerun file (``--config-name rerun`` in a run folder) is data: it may not configure Hydra,
    may not pull in other configs, and may name only allowed classes."""
    folder, name = _option(argv, "--config-dir", "-cd"), _option(argv, "--config-name", "-cn")
    if folder is None or name is None:
        return
    path = Path(folder) / (name if name.endswith(".yaml") else f"{name}.yaml")
    if path.name != "rerun.yaml" or not path.is_file():
        return
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a readable rerun file ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a readable rerun file (not a mapping)")
    if "hydra" in data:
        raise ConfigError(f"{path}: hydra: a rerun file may not configure Hydra (peftlab never writes this key)")
    if data.get("defaults") != RERUN_DEFAULTS:
        raise ConfigError(f"{path}: defaults: a rerun file lists exactly {RERUN_DEFAULTS}, got {data.get('defaults')}")
    bad = disallowed_targets({k: v for k, v in data.items() if k != "defaults"}, "")
    if bad:
        raise ConfigError(f"{path}: {bad[0]}")
    remote = (data.get("model") or {}).get("trust_remote_code") if isinstance(data.get("model"), dict) else None
    if remote and "model.trust_remote_code=true" not in argv:
        raise ConfigError(f"{path}: model.trust_remote_code: true is not obeyed from a file; add "
                          "model.trust_remote_code=true to the command line if you trust that model's code")
