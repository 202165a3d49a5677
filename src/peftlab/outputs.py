"""Run folders: atomic writes, the never-overwrite guard, reading a run folder back, versions."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from peftlab.errors import ConfigError

# files whose presence means a run folder holds a finished (or partly saved) run
FINISHED_MARKERS = ("metrics.json", "adapter", "eval.json")
TMP_MARK = ".tmp-"  # temporary names: .<final name>.tmp-<random>


@contextmanager
def atomic_path(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """The one way peftlab writes a file or folder: the block writes to a temporary name beside
    ``final``, which is renamed to ``final`` only when the block ends without an error; the
    temporary is removed either way. Unless ``overwrite``, an existing ``final`` is never replaced
    (also when another process creates it meanwhile: the rename then fails with OSError). A folder
    that is overwritten is moved aside first and removed only once the new one is in place."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise ConfigError(f"{final} already exists; it is never overwritten")
    tmp = final.with_name(f".{final.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if overwrite and tmp.is_dir() and final.is_dir():
            old = final.with_name(f".{final.name}{TMP_MARK}old-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        elif overwrite:
            os.replace(tmp, final)
        elif tmp.is_dir():
            os.rename(tmp, final)  # fails when final appeared meanwhile and is not empty
        else:
            os.link(tmp, final)  # fails when final appeared meanwhile
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))


def metric_at(metrics: Any, dotted: str) -> float | None:
    """The number at a dotted ``metrics.json`` key (``test.exact_match``, ``memory.peak_rss_mb``),
    or None where the key is missing or not a number."""
    value = metrics
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def remove_stale_temps(folder: Path, name: str = "") -> list[str]:
    """Remove what interrupted atomic writes left in ``folder`` (``.<name>.tmp-*``; every name when
    ``name`` is empty). Call it only while holding the lock that covers those writes."""
    removed = []
    for tmp in Path(folder).glob(f".{name or '*'}{TMP_MARK}*"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        removed.append(tmp.name)
    return removed


# ------------------------------------------------------------------------------------- locks
class FolderLock:
    """An exclusive lock on a folder: ``<folder>/.lock``, created if needed and locked with
    ``flock``, so that the operating system releases it when the holder ends, however it ends
    (a ``kill -9`` leaves no stale lock). The file says who holds it."""

    HELD: dict[str, "FolderLock"] = {}  # this process's locks, by folder

    def __init__(self, folder: Path, key: str):
        self.folder, self.key, self.fd = Path(folder), key, None

    def acquire(self) -> "FolderLock":
        import fcntl

        held = FolderLock.HELD.get(str(self.folder.resolve()))
        if held is not None:  # this process holds it already (the command line locked it before Hydra)
            return held
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = path.read_text().strip() or "another process"
            os.close(fd)
            raise ConfigError(f"{self.key}: {self.folder} is in use by another peftlab command ({holder}); "
                              "wait for it to end or pick another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                 .encode())
        self.fd = fd
        FolderLock.HELD[str(self.folder.resolve())] = self
        return self

    def release(self) -> None:
        import fcntl

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
            FolderLock.HELD.pop(str(self.folder.resolve()), None)


@contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for a block, waiting for another holder to finish
    (two runs building the same cache entry: the second waits, then finds it built)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def lock_folder(folder: Path, key: str = "hydra.run.dir") -> FolderLock:
    """Lock ``folder`` for the rest of this process (the lock goes with the process)."""
    return FolderLock(folder, key).acquire()


@contextmanager
def folder_lock(folder: Path, key: str = "hydra.run.dir") -> Iterator[FolderLock]:
    """Hold ``folder``'s lock for a block; a lock this process already holds is kept after it."""
    held = FolderLock.HELD.get(str(Path(folder).resolve()))
    lock = held or FolderLock(folder, key).acquire()
    try:
        yield lock
    finally:
        if held is None:
            lock.release()


# ------------------------------------------------------------------------------- run folders
def check_fresh_run_dir(run_dir: Path, key: str = "hydra.run.dir") -> None:
    found = [m for m in FINISHED_MARKERS if (Path(run_dir) / m).exists()]
    if found:
        raise ConfigError(f"{key}: {run_dir} already holds a run ({', '.join(found)}); it is never overwritten, "
                          "pick another folder")


def discard_unstarted_run_dir(run_dir: Path) -> None:
    """After a failure before anything was produced: remove what Hydra wrote, so the folder does
    not look like a run. Anything else in the folder is left alone."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or any((run_dir / m).exists() for m in (*FINISHED_MARKERS, "checkpoints")):
        return
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    remove_stale_temps(run_dir)
    for produced in [*run_dir.glob("*.log"), run_dir / "config.yaml", run_dir / "rerun.yaml",
                     run_dir / "zero_shot_predictions.jsonl", run_dir / ".lock"]:
        produced.unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass


def load_run_config(run_dir: Path, trust_remote_code: bool = False):
    """The validated config (a ``TrainSchema``) a finished run folder was trained with.

    A run folder is data: its ``model.trust_remote_code`` is never obeyed; the caller passes the
    user's own choice (the command's ``trust_remote_code=``) instead."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from peftlab.config import validate
    from peftlab.config.commands import TrainSchema

    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if run_status(run_dir) == "diverged":
        raise ConfigError(f"run_dir: {run_dir} diverged during training (see its metrics.json): it has no adapter")
    if not path.is_file() or not (run_dir / "adapter").is_dir():
        raise ConfigError(f"run_dir: {run_dir} is not a finished peftlab-train run folder "
                          "(it needs config.yaml and adapter/)")
    import yaml

    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, ValueError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ConfigError(f"run_dir: {path} is not a readable run config ({first})") from None
    if not isinstance(cfg, dict) and not OmegaConf.is_dict(cfg):
        raise ConfigError(f"run_dir: {path} is not a readable run config (not a mapping)")
    try:
        run = validate(cfg, TrainSchema)
    except ConfigError as err:
        raise ConfigError(f"run_dir: {path}: {err}") from None
    run.model.trust_remote_code = trust_remote_code
    return run


def run_status(run_dir: Path) -> Optional[str]:
    """``finished``, ``diverged``, ... as the run's metrics.json says; None without one."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("status", "finished")
    except (ValueError, OSError):
        return "unreadable"


# --------------------------------------------------------------------------------- versions
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, Any]:
    import lightning
    import peft
    import torch
    import transformers

    import peftlab

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "lightning": lightning.__version__, "peftlab": peftlab.__version__, "git_commit": git_commit()}
