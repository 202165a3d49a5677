"""One command per folder: ``<folder>/.lock``, an operating-system lock (``filelock``, ``flock``
on Linux) that the system releases when its holder ends, however it ends (a ``kill -9`` leaves no
stale lock). Within one process the lock is re-entrant: the command line locks a run folder before
Hydra writes into it, and the job that runs there takes the same lock again."""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from peftlab.errors import ConfigError

LOCK_NAME = ".lock"
# The locks this process holds, by path. filelock keeps its singletons by weak reference and a
# collected FileLock releases its lock: a lock taken for the rest of the process (claim_run_dir)
# must stay referenced. tests/test_reliability.py starts a second command on a held folder.
_HELD: dict[str, FileLock] = {}


def _lock(folder: Path) -> FileLock:
    # one object per path in this process (is_singleton), shared by every thread: a process holds a folder
    return FileLock(str(Path(folder).resolve() / LOCK_NAME), is_singleton=True, thread_local=False)


def lock_folder(folder: Path, key: str = "hydra.run.dir") -> FileLock:
    """Take ``folder``'s lock (creating the folder), or stop with one line naming ``key`` and the
    holder when another process has it. Held until released, or until the process ends."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = _lock(folder)
    first = not lock.is_locked
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise _in_use(folder, key) from None
    _HELD[lock.lock_file] = lock
    if first:  # who holds it, for the message another command prints
        with open(folder / LOCK_NAME, "w") as f:
            f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    return lock


def check_not_held(folder: Path, key: str = "hydra.run.dir") -> None:
    """Stop with the holder's name when another process holds ``folder``'s lock. A probe only: the
    lock file is opened read-only and locked shared for an instant, so that it needs no write access
    (a colleague's run, a read-only mount), never empties another tool's ``.lock``, and two readers
    probing at once do not take each other for a holder."""
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return
    if _lock(folder).is_locked:  # this process holds it
        return
    if held_elsewhere(path):
        raise _in_use(folder, key)


def held_elsewhere(path: Path) -> bool:
    """Whether a process holds the operating-system lock on the lock file ``path`` (an exclusive
    holder refuses the shared probe)."""
    try:
        import fcntl
    except ImportError:  # not on a POSIX system: filelock's own probe (it opens the file for writing)
        lock = FileLock(str(path), thread_local=False)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            return True
        lock.release()
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:  # unreadable or a link: no lock a peftlab process could hold
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _in_use(folder: Path, key: str) -> ConfigError:
    """The one line for a folder another process holds, naming the holder (what its lock file says)."""
    try:
        holder = (Path(folder) / LOCK_NAME).read_text().strip()
    except OSError:
        holder = ""
    return ConfigError(f"{key}: {folder} is in use by another peftlab command ({holder or 'another process'}); "
                       "wait for it to end or pick another folder")


@contextmanager
def folder_lock(folder: Path, key: str = "hydra.run.dir") -> Iterator[FileLock]:
    """Hold ``folder``'s lock for a block; a lock this process already held stays held after it."""
    lock = lock_folder(folder, key)
    try:
        yield lock
    finally:
        lock.release()
        if not lock.is_locked:
            _HELD.pop(lock.lock_file, None)


@contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Hold a lock on ``path`` for a block, waiting for another holder to finish (two runs building
    the same cache entry: the second waits, then finds it built)."""
    with FileLock(str(path), thread_local=False):
        yield
