"""The states of a run folder, and what a command may do with each: write a new run only into a
folder that does not exist yet or is empty (or continue a killed run in its own folder), read a
finished one, never change one that holds anything else, and remove only what it wrote for a job
that never started."""

from __future__ import annotations

import atexit
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from peftlab.errors import ConfigError
from peftlab.runs.files import remove_stale_temps
from peftlab.runs.locks import LOCK_NAME, check_not_held, folder_lock, lock_folder

# files whose presence means a folder holds a finished (or partly saved) run or evaluation
FINISHED_MARKERS = ("metrics.json", "adapter", "eval.json")


def check_fresh_run_dir(run_dir: Path, key: str = "hydra.run.dir", resuming: bool = False) -> None:
    """Refuse a folder that holds a finished run or evaluation. When ``resuming`` a killed run in its
    own folder, an adapter without a metrics.json is what a kill between saving the one and writing
    the other leaves: the resumed run writes both again."""
    markers = [m for m in FINISHED_MARKERS if not (resuming and m == "adapter")]
    found = [m for m in markers if (Path(run_dir) / m).exists()]
    if found:
        raise ConfigError(f"{key}: {run_dir} already holds a run ({', '.join(found)}); it is never overwritten, "
                          "pick another folder")


@contextmanager
def fresh_output_folder(folder: Path) -> Iterator[Path]:
    """A command's own output folder (peftlab-eval's, peftlab-combine's) for a block: locked for this
    process, and refused when it already holds a finished run or evaluation."""
    folder = Path(folder)
    with folder_lock(folder):
        check_fresh_run_dir(folder)
        yield folder


def check_claimable(folder: Path, key: str = "hydra.run.dir", resuming: bool = False) -> None:
    """A folder a command may write into: one that does not exist yet, or an empty one; when
    ``resuming``, the killed run's own folder. Everything else belongs to someone (a finished,
    diverged or killed run, a command still at work, the user's own files) and is refused before
    any byte in it changes."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"{key}: {folder} is a file, not a folder")
    check_not_held(folder, key)
    check_fresh_run_dir(folder, key, resuming)  # a finished or diverged run: its metrics.json
    held = sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME)
    if held and not resuming:
        killed = " (a killed run: resume=<folder> continues it)" if (folder / "checkpoints").is_dir() else ""
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise ConfigError(f"{key}: {folder} is not empty ({shown}){killed}; peftlab writes only into a new or "
                          "empty folder, pick another")


def resuming_into(folder: Path, argv: list[str]) -> bool:
    """Whether the command line continues a run in ``folder`` from one of its own checkpoints
    (``resume=<folder>`` becomes ``hydra.run.dir=<folder> resume_from=<folder>/checkpoints/...``)."""
    own = (Path(folder).resolve() / "checkpoints")
    return any(a.startswith("resume_from=") and Path(a.split("=", 1)[1]).resolve().parent == own for a in argv)


def claim_run_dir(folder: Path, key: str = "hydra.run.dir", resuming: bool = False) -> None:
    """An explicit ``hydra.run.dir`` (or ``hydra.sweep.dir``): check that this command may write
    there (check_claimable), and lock it for the rest of this process before Hydra writes into it,
    so that a second command aimed at it stops at once. A folder this process creates is removed at
    exit if the run never started in it."""
    check_claimable(folder, key, resuming)
    existed = folder.exists()
    lock_folder(folder, key)
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
