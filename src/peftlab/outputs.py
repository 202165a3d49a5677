"""Run folders and what goes in them: atomic writes, the never-overwrite guard, metrics.json."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable

from peftlab.errors import ConfigError

# files whose presence means a run folder holds a finished (or partly saved) run
FINISHED_MARKERS = ("metrics.json", "adapter", "eval.json")


def write_json(path: Path, data: Any) -> None:
    """Write JSON to a temporary name beside ``path``, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def metric_at(metrics: Any, dotted: str) -> float | None:
    """The number at a dotted ``metrics.json`` key (``test.exact_match``, ``memory.peak_rss_mb``),
    or None where the key is missing or not a number."""
    value = metrics
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def save_folder_atomically(final: Path, save: Callable[[Path], None]) -> Path:
    """``save(tmp)`` writes a folder; it is renamed to ``final`` only when complete."""
    final = Path(final)
    if final.exists():
        raise ConfigError(f"{final} already exists; it is never overwritten")
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        save(tmp)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


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
    for produced in [*run_dir.glob("*.log"), run_dir / "config.yaml", run_dir / "rerun.yaml",
                     run_dir / "zero_shot_predictions.jsonl"]:
        produced.unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass


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
