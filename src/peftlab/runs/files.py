"""Atomic writes: the one way peftlab writes a file or folder, and the clean-up of what an
interrupted write left behind."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from peftlab.errors import ConfigError

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


def remove_stale_temps(folder: Path, name: str = "") -> list[str]:
    """Remove what interrupted atomic writes left in ``folder`` (``.<name>.tmp-*``; every name when
    ``name`` is empty). Call it only while holding the lock that covers those writes."""
    removed = []
    for tmp in Path(folder).glob(f".{name or '*'}{TMP_MARK}*"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        removed.append(tmp.name)
    return removed
