"""``<run_dir>/rerun.yaml``: the composed config of a run as a primary config, so that
``peftlab-train --config-dir <run_dir> --config-name rerun`` runs it again into a new folder; and
reading such a file as data before Hydra does (Hydra would instantiate what it names)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from peftlab.config.instantiate import disallowed_resolvers, disallowed_targets
from peftlab.errors import ConfigError
from peftlab.runs.config import check_run_plugins
from peftlab.runs.files import atomic_path

RERUN = "rerun.yaml"
# what peftlab writes into rerun.yaml: the paths (output and cache folders) are the running machine's
RERUN_DEFAULTS = ["schema_train", {"paths": "default"}, {"hydra": "default"}, "_self_"]


def write_rerun_config(cfg: DictConfig, run_dir: Path) -> None:
    """``<run_dir>/rerun.yaml``: the composed config with its interpolations, as a primary config,
    without ``paths`` (the folders of the machine that runs it again come from its own
    ``paths: default``). ``peftlab-train --config-dir <run_dir> --config-name rerun`` runs it again
    into a new folder."""
    body = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "paths"]))
    header = ("# Re-run this run into a new folder:\n"
              f"#   peftlab-train --config-dir {run_dir} --config-name rerun\n"
              "defaults:\n  - schema_train\n  - paths: default\n  - hydra: default\n  - _self_\n\n")
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
    for key in ("hydra", "paths"):
        if key in data:
            raise ConfigError(f"{path}: {key}: a rerun file may not set {key} (peftlab never writes this key)")
    if data.get("defaults") != RERUN_DEFAULTS:
        raise ConfigError(f"{path}: defaults: a rerun file lists exactly {RERUN_DEFAULTS}, got {data.get('defaults')}")
    body = {k: v for k, v in data.items() if k != "defaults"}
    check_run_plugins(path.parent, data, str(path))  # loaded by the user's own command line, never from here
    bad = disallowed_targets(body, "") or disallowed_resolvers(body, "")
    if bad:
        raise ConfigError(f"{path}: {bad[0]}")
    _check_config_dir(path.parent)
    remote = (data.get("model") or {}).get("trust_remote_code") if isinstance(data.get("model"), dict) else None
    if remote and "model.trust_remote_code=true" not in argv:
        raise ConfigError(f"{path}: model.trust_remote_code: true is not obeyed from a file; add "
                          "model.trust_remote_code=true to the command line if you trust that model's code")


def _check_config_dir(folder: Path) -> None:
    """With ``--config-dir <run folder>``, Hydra looks there first for every config it loads: the
    primary config's schema (``schema_train``), Hydra's own groups (``hydra/``: job logging can build
    any handler) and peftlab's groups. A run folder holds none of them; a folder that does is refused."""
    from peftlab.config import CONF_DIR

    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()} | {"hydra"}
    found = sorted(p.name for p in folder.iterdir()
                   if (p.is_dir() and p.name in groups)
                   or (p.is_file() and p.suffix in (".yaml", ".yml") and p.name not in (RERUN, "config.yaml")))
    if found:
        raise ConfigError(f"{folder}: holds {', '.join(found)}, which Hydra would load with --config-dir; a run "
                          "folder holds no other config (a rerun file is read as data)")
