"""Run folders: atomic writes, the never-overwrite guard, reading a run folder back, versions."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from peftlab.errors import ConfigError

# files whose presence means a run folder holds a finished (or partly saved) run
FINISHED_MARKERS = ("metrics.json", "adapter", "eval.json")
TMP_MARK = ".tmp-"  # temporary names: .<final name>.tmp-<random>


@contextmanager
def atomic_path(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """The one way peftlab writes a file or folder: the block writes to a temporary name beside
    ``final``, which is renamed to ``final`` only when the block ends without an error; the
    temporary is removed either way. Unless ``overwrite``, an existing ``final`` is never replaced
    (also when another process creates it meanwhile: the rename then fails with OSError)."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise ConfigError(f"{final} already exists; it is never overwritten")
    tmp = final.with_name(f".{final.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if overwrite:
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
    for produced in [*run_dir.glob("*.log"), run_dir / "config.yaml", run_dir / "rerun.yaml",
                     run_dir / "zero_shot_predictions.jsonl"]:
        produced.unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass


def load_run_config(run_dir: Path):
    """The validated config (a ``TrainSchema``) a finished run folder was trained with."""
    from omegaconf import OmegaConf

    from peftlab.config import validate
    from peftlab.config.commands import TrainSchema

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "adapter").is_dir():
        raise ConfigError(f"run_dir: {run_dir} is not a finished peftlab-train run folder "
                          "(it needs config.yaml and adapter/)")
    return validate(OmegaConf.load(run_dir / "config.yaml"), TrainSchema)


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
