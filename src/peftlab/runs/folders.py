"""The states of a run folder, and what a command may do with each: write into a fresh one, read a
finished one, never overwrite one that holds a run, and remove only what it wrote for a job that
never started."""

from __future__ import annotations

import atexit
import json
import shutil
from pathlib import Path
from typing import Optional

from peftlab.errors import ConfigError
from peftlab.runs.files import remove_stale_temps
from peftlab.runs.locks import LOCK_NAME, lock_folder

# files whose presence means a folder holds a finished (or partly saved) run or evaluation
FINISHED_MARKERS = ("metrics.json", "adapter", "eval.json")


def check_fresh_run_dir(run_dir: Path, key: str = "hydra.run.dir") -> None:
    found = [m for m in FINISHED_MARKERS if (Path(run_dir) / m).exists()]
    if found:
        raise ConfigError(f"{key}: {run_dir} already holds a run ({', '.join(found)}); it is never overwritten, "
                          "pick another folder")


def claim_run_dir(folder: Path) -> None:
    """An explicit ``hydra.run.dir``: refuse a folder that holds a run, and lock it for the rest of
    this process before Hydra writes into it, so that a second command aimed at it stops at once.
    A folder this process creates is removed at exit if the run never started in it."""
    check_fresh_run_dir(folder)
    existed = folder.exists()
    lock_folder(folder)
    if not existed:
        atexit.register(_drop_if_empty, folder)


def _drop_if_empty(folder: Path) -> None:
    """A folder this process created for a run that never started holds only its lock file."""
    if folder.is_dir() and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
        (folder / LOCK_NAME).unlink(missing_ok=True)
        folder.rmdir()


def discard_unstarted_run_dir(run_dir: Path) -> None:
    """After a failure before anything was produced: remove what Hydra and peftlab wrote, so the
    folder does not look like a run. Anything else in the folder is left alone."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or any((run_dir / m).exists() for m in (*FINISHED_MARKERS, "checkpoints")):
        return
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    remove_stale_temps(run_dir)
    for produced in [*run_dir.glob("*.log"), run_dir / "config.yaml", run_dir / "rerun.yaml",
                     run_dir / "zero_shot_predictions.jsonl", run_dir / LOCK_NAME]:
        produced.unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass


def run_status(run_dir: Path) -> Optional[str]:
    """``finished``, ``diverged``, ... as the run's metrics.json says; None without one."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("status", "finished")
    except (ValueError, OSError, AttributeError):
        return "unreadable"
