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
from peftlab.config.user_plugins import check_loaded
from peftlab.errors import ConfigError
from peftlab.runs.folders import run_status
from peftlab.runs.locks import check_not_held


def read_run_config(run_dir: Path, trust_remote_code: bool = False, key: str = "run_dir"):
    """The validated config (a ``TrainSchema``) of a finished run folder: the one reader every
    command that takes a run as a source goes through (eval, combine, merge, generate, init_adapter,
    rl.reward_model). Refused, with one line naming ``key`` and the folder or file: a folder another
    process holds, a run without a metrics.json that says it finished (killed, still running,
    diverged), a config that does not validate (every block, the optional ones too), and adapter
    files that are missing, unreadable, truncated or corrupt.

    A run folder is data: its ``model.trust_remote_code`` is never obeyed (the caller passes the
    user's own choice, the command's ``trust_remote_code=``), and a hub model or data set it names is
    read from the local cache only."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    status = run_status(run_dir)
    if status == "diverged":
        raise ConfigError(f"{key}: {run_dir} diverged during training (see its metrics.json): it has no adapter")
    if not path.is_file() or not (run_dir / "adapter").is_dir():
        raise ConfigError(f"{key}: {run_dir} is not a finished peftlab-train run folder "
                          "(it needs config.yaml and adapter/)")
    check_not_held(run_dir, key)
    if status not in ("finished", "nan_metric"):  # a metric that came out NaN says nothing against the adapter
        why = ("no metrics.json: it was killed before the end, or is still being written (resume= continues a "
               "killed run)") if status is None else f"its metrics.json says status {status!r}"
        raise ConfigError(f"{key}: {run_dir} is not a finished run ({why})")
    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, ValueError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ConfigError(f"{key}: {path} is not a readable run config ({first})") from None
    if not isinstance(cfg, dict) and not OmegaConf.is_dict(cfg):
        raise ConfigError(f"{key}: {path} is not a readable run config (not a mapping)")
    bad = disallowed_resolvers(OmegaConf.to_container(cfg, resolve=False), "")
    if bad:  # peftlab writes config.yaml resolved: an interpolation that reads anything came from elsewhere
        raise ConfigError(f"{key}: {path}: {bad[0]}")
    check_run_plugins(run_dir, cfg, f"{key}: {path}")
    try:
        run = validate(cfg, TrainSchema)
    except ConfigError as err:
        raise ConfigError(f"{key}: {path}: {err}") from None
    check_adapter_files(run_dir / "adapter", key)
    run.model.trust_remote_code = trust_remote_code
    run.model.local_files_only = True  # a hub model it names comes from the local cache, never the network
    run.data.local_files_only = True  # and so does a hub data set
    return run


def check_run_plugins(run_dir: Path, cfg: Any, where: str) -> None:
    """Refuse a run whose code came from plug-ins this process has not loaded: those its config names
    (``plugins=`` on its command line) and those its metrics.json records (installed entry points too).
    A run folder is data: nothing it names is imported."""
    named = list(cfg.get("plugins") or []) if hasattr(cfg, "get") else []
    try:
        recorded = json.loads((Path(run_dir) / "metrics.json").read_text()).get("versions", {}).get("plugins") or {}
    except (OSError, ValueError, AttributeError):
        recorded = {}
    check_loaded([*named, *[m for m in recorded if m not in named]], f"{where}: plugins")


def read_source_adapter(folder: Path, key: str):
    """An adapter folder named as a source (``init_adapter=``, ``rl.reward_model=``): inside a run
    folder (``<run_dir>/adapter``), that run must be finished (``read_run_config``), and its config
    is returned; a folder of its own is checked alone (its adapter files), and None is returned."""
    folder = Path(folder).expanduser()
    if folder.name == "adapter" and (folder.parent / "config.yaml").is_file():
        return read_run_config(folder.parent, key=key)
    check_not_held(folder, key)
    check_adapter_files(folder, key)
    return None


def check_adapter_files(folder: Path, key: str) -> None:
    """Every weights file of a saved adapter (or whole model) is whole: its safetensors header reads
    and the file is exactly as long as the header says (a truncated or overwritten file fails here
    with its name, not deep inside peft or halfway through a command). Only the header is read."""
    folder = Path(folder)
    if (folder / "adapter_config.json").exists():
        read_adapter_config(folder, key)
    files = sorted(folder.glob("*.safetensors"))
    if not files and not list(folder.glob("*.bin")):
        raise ConfigError(f"{key}: {folder} holds no weights file (*.safetensors)")
    for path in files:
        safetensors_header(path, key)


def safetensors_header(path: Path, key: str) -> dict[str, Any]:
    """The tensor entries of a safetensors file's header (names, dtypes, shapes, offsets), once the
    header reads and the file is exactly as long as it says; only the header is read."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= min(size - 8, 100_000_000):
                raise ValueError(f"a header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (OSError, ValueError, UnicodeDecodeError, AttributeError, TypeError, KeyError, IndexError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{key}: {path} is corrupted or truncated ({why})") from None
    if 8 + n + end != size:
        raise ConfigError(f"{key}: {path} is corrupted or truncated (the header describes {8 + n + end} bytes, the "
                          f"file holds {size})")
    return tensors


def same_files(folders: list[Path], key: str) -> None:
    """Refuse the same adapter files reached twice (two run folders whose ``adapter`` is one folder
    through a link, a folder named twice): they are one source, not two."""
    seen: dict[tuple[int, int], Path] = {}
    for folder in folders:
        weights = sorted(Path(folder).glob("*.safetensors"))
        if not weights:
            continue
        st = weights[0].stat()
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            raise ConfigError(f"{key}: {seen[ident]} and {folder} are the same adapter files; name each source once")
        seen[ident] = Path(folder)


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
