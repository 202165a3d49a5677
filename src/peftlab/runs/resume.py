"""``peftlab-train resume=<folder>``: the command line that continues a killed run in its own
folder. The folder's ``.hydra/overrides.yaml`` is read as data: a list of plain overrides, none of
which may configure Hydra."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from peftlab.config.instantiate import disallowed_resolvers
from peftlab.errors import ConfigError
from peftlab.runs.folders import run_status

# what a resumed run may set besides resume=: how it shows progress and how many threads it uses
RESUME_MAY_SET = ("trainer.enable_progress_bar=", "hardware.threads=", "model.trust_remote_code=", "plugins=")
_TRUE = ("true", "yes", "on", "1")


def resume_args(argv: list[str]) -> list[str]:
    """``resume=<run_dir>``: the command line that continues a killed run in its own folder, with
    the overrides it started with (read from the folder as data) and its last checkpoint."""
    given = [a for a in argv if a.startswith("resume=")]
    if not given:
        return argv
    folder = Path(given[-1].split("=", 1)[1]).expanduser()
    rest = [a for a in argv if not a.startswith("resume=")]
    extra = [a for a in rest if not a.startswith(RESUME_MAY_SET)]
    if extra:
        raise ConfigError(f"resume: {extra[0]}: a resumed run keeps the settings it started with; to train on "
                          f"with other settings, start a new run with resume_from={folder}/checkpoints/last.ckpt")
    overrides_file = folder / ".hydra" / "overrides.yaml"
    # the newest checkpoint (checkpoints are written whole, then renamed: a kill between a step's
    # checkpoint and last.ckpt leaves the step's the newest)
    last = max((folder / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns, default=None)
    if run_status(folder):
        raise ConfigError(f"resume: {folder} has ended ({run_status(folder)}, see its metrics.json); "
                          "nothing to resume")
    if not overrides_file.is_file():
        raise ConfigError(f"resume: {folder} is not a peftlab-train run folder (no .hydra/overrides.yaml)")
    if last is None:
        raise ConfigError(f"resume: {folder} has no checkpoint yet ({folder / 'checkpoints'}); start it again "
                          "instead")
    try:
        original = yaml.safe_load(overrides_file.read_text()) or []
    except yaml.YAMLError as err:
        raise ConfigError(f"resume: {overrides_file} is not readable ({str(err).splitlines()[0]})") from None
    if not isinstance(original, list) or not all(isinstance(o, str) for o in original):
        raise ConfigError(f"resume: {overrides_file} is not a list of overrides")
    _check_as_data(original, overrides_file, rest)
    _check_plugins(folder)
    kept = [o for o in original if not o.startswith(("resume_from=", *RESUME_MAY_SET))]
    return [*kept, *rest, f"hydra.run.dir={folder}", f"resume_from={last}"]


def _check_plugins(folder: Path) -> None:
    """The plug-ins the run loaded (its config.yaml's ``plugins``, written as it started) are loaded
    here too: from the user's own command line or environment, never from the folder."""
    from peftlab.runs.config import check_run_plugins

    path = folder / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        saved = {}  # a config that cannot be read is refused where the run's config is compared
    check_run_plugins(folder, saved if isinstance(saved, dict) else {}, f"resume: {path}")


def _check_as_data(overrides: list[str], path: Path, argv: list[str]) -> None:
    """A run folder's overrides are data: nothing that configures Hydra, reads the environment or
    decodes text, and no remote code unless the user's own command line turns it on."""
    for o in overrides:
        if o.lstrip("+~").startswith("hydra") or o.startswith("-"):
            raise ConfigError(f"resume: {path}: {o!r} is not an override a run folder may hold")
    bad = disallowed_resolvers(overrides, "overrides")
    if bad:
        raise ConfigError(f"resume: {path}: {bad[0]}")
    wants_code = any(o.lstrip("+~").split("=", 1)[0] == "model.trust_remote_code"
                     and o.split("=", 1)[-1].strip().lower() in _TRUE for o in overrides)
    if wants_code and "model.trust_remote_code=true" not in argv:
        raise ConfigError(f"resume: {path} turns on model.trust_remote_code, which is not obeyed from a file; add "
                          "model.trust_remote_code=true to the command line if you trust that model's code")


def check_same_config(cfg: DictConfig, run_dir: Path) -> None:
    """Resuming in place: the composed config must be the one the run started with, but for what
    ``resume=`` lets the command line change (runs/resume.py's RESUME_MAY_SET)."""
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    now = OmegaConf.to_container(cfg, resolve=True)
    may_change = {m.rstrip("=") for m in RESUME_MAY_SET}

    def first_difference(a: Any, b: Any, key: str = "") -> Optional[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                full = f"{key}.{k}" if key else str(k)
                if full not in ("resume_from", *may_change):
                    found = first_difference(a.get(k), b.get(k), full)
                    if found:
                        return found
            return None
        return None if a == b else f"{key} ({a!r} then, {b!r} now)"

    diff = first_difference(saved, now)
    if diff:
        raise ConfigError(f"resume: the config differs from the one {run_dir} started with: {diff}")


def check_same_data(saved: Optional[dict[str, str]], now: dict[str, str]) -> None:
    """Resuming in place: every data file the checkpoint was trained on, unchanged (sha256)."""
    for path, digest in (saved or {}).items():
        if now.get(path) != digest:
            what = "changed" if path in now else "is no longer read (missing, or data.path differs)"
            raise ConfigError(f"resume: the data file {path} {what} since the checkpoint was written; a resumed run "
                              "reads the data it started with (restore the file, or start a new run with resume_from=)")
