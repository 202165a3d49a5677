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
from peftlab.runs.files import TMP_MARK, remove_stale_temps
from peftlab.runs.locks import LOCK_NAME, check_not_held, folder_lock, held_elsewhere, lock_folder

# files whose presence means a folder holds a finished (or partly saved) run or evaluation
FINISHED_MARKERS = ("metrics.json", "adapter", "eval.json")
# what marks a folder as someone's: a run or a command's folder (Hydra's .hydra/), a sweep (Hydra's
# multirun.yaml), a report (report.json beside results.md), a lock another peftlab process holds
OWNER_MARKERS = (LOCK_NAME, ".hydra", "multirun.yaml", "report.json")
# the entries of a run or sweep folder that peftlab itself writes into
WRITTEN_ENTRIES = ("report", "merged", "checkpoints", "adapter", "predictions")


def owner_above(folder: Path) -> Optional[tuple[Path, str]]:
    """The nearest folder above ``folder`` that holds a run, a sweep, a report or a lock, with the
    entry that says so; None when none does. Links are resolved: a path that reaches a run folder
    through a link is inside it."""
    for parent in Path(folder).expanduser().resolve().parents:
        for marker in OWNER_MARKERS:
            if _marks(parent, marker):
                return parent, marker
    return None


def _marks(folder: Path, marker: str) -> bool:
    path = folder / marker
    if marker == LOCK_NAME:
        return path.is_file() and _held_elsewhere(folder)
    if marker == ".hydra":  # a command's folder; or a run written without one (config.yaml beside its record)
        return path.is_dir() or ((folder / "config.yaml").is_file()
                                 and any((folder / m).exists() for m in ("metrics.json", "adapter", "checkpoints")))
    if marker == "report.json":
        return path.is_file() and (folder / "results.md").is_file()
    return path.exists()


def _held_elsewhere(folder: Path) -> bool:
    """Whether another peftlab process holds ``folder``'s lock (a lock file alone, which other tools
    name alike, says nothing; one that is not peftlab's is never opened for writing)."""
    try:
        if not (folder / LOCK_NAME).read_text(errors="replace").startswith("pid "):
            return False
    except OSError:
        return False
    return held_elsewhere(folder / LOCK_NAME)


def check_nothing_above(folder: Path, key: str) -> None:
    """Refuse an output folder inside a run, a sweep, a report or a locked folder: it belongs to
    whoever made that one (reports would list it as a run, a resumed run would meet it)."""
    found = owner_above(folder)
    if found:
        parent, marker = found
        raise ConfigError(f"{key}: {folder} is inside {parent}, which holds {_what(marker)} ({marker}); "
                          "peftlab writes only into a folder of its own, pick one outside it")


def claim_output(folder: Path, key: str = "out_dir", own: tuple[str, ...] = ()) -> None:
    """An explicit output folder (``out_dir=``): the same claim as a run folder's, for a folder that
    may already hold this command's own earlier output (the names in ``own``, which the command
    itself decides whether to replace): not a link, not inside a run, a sweep, a report or a locked
    folder, not held by another process, and holding nothing else."""
    folder = Path(folder)
    if folder.is_symlink():
        raise ConfigError(f"{key}: {folder} is a symbolic link; peftlab writes only into a folder of its own")
    check_nothing_above(folder, key)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"{key}: {folder} is a file, not a folder")
    check_not_held(folder, key)
    held = sorted(p.name for p in folder.iterdir() if p.name not in (*own, LOCK_NAME) and TMP_MARK not in p.name)
    if held:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise ConfigError(f"{key}: {folder} holds what this command did not write ({shown}); give a new or empty "
                          "folder")


def _what(marker: str) -> str:
    return {LOCK_NAME: "a folder another peftlab command holds", "index.jsonl": "a sweep", "multirun.yaml": "a sweep",
            "report.json": "a report"}.get(marker, "a run")


def check_no_link(folder: Path, name: str, key: str) -> Path:
    """``folder/name``, an entry peftlab writes into: refused when it is a symbolic link (a link in
    someone's run folder would send the write wherever it points)."""
    entry = Path(folder) / name
    if entry.is_symlink():
        raise ConfigError(f"{key}: {entry} is a symbolic link; peftlab never writes through a link in a run "
                          "folder (remove it, or give another folder)")
    return entry


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
    if folder.is_symlink():
        raise ConfigError(f"{key}: {folder} is a symbolic link; peftlab writes only into a folder of its own")
    if not resuming:
        check_nothing_above(folder, key)
    else:  # a killed run continued in its own folder: what it writes into must be its own
        for name in WRITTEN_ENTRIES:
            check_no_link(folder, name, key)
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
    if not run_dir.is_dir() or any(not _written_at_start(p) for p in run_dir.iterdir()):
        return  # it holds more than a failed start writes: someone's, or work that began
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    remove_stale_temps(run_dir)
    for produced in [*run_dir.glob("*.log"), run_dir / "config.yaml", run_dir / "rerun.yaml",
                     run_dir / "zero_shot_predictions.jsonl", run_dir / LOCK_NAME]:
        produced.unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass


def _written_at_start(entry: Path) -> bool:
    """What Hydra and peftlab write into a command's folder before its work begins."""
    return (entry.name in (".hydra", "config.yaml", "rerun.yaml", "zero_shot_predictions.jsonl", LOCK_NAME)
            or entry.suffix == ".log" or TMP_MARK in entry.name)


def run_status(run_dir: Path) -> Optional[str]:
    """``finished``, ``diverged``, ... as the run's metrics.json says; None without one."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("status", "finished")
    except (ValueError, OSError, AttributeError):
        return "unreadable"
