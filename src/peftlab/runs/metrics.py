"""``metrics.json``: its one writer, reading it back, and the versions every run records.

The keys of DESIGN.md's contract (``model``, ``method``, ``task``, ``seed``, ``params.*``,
``zero_shot``, ``test``, ``train.*``, ``memory.peak_rss_mb``, ``versions``) are written by the
training job; nothing else in peftlab writes this file."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

from peftlab.runs.files import write_json

FILE = "metrics.json"


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Write (or replace) the run's ``metrics.json``, atomically."""
    write_json(Path(run_dir) / FILE, metrics)


def metric_at(metrics: Any, dotted: str) -> float | None:
    """The number at a dotted ``metrics.json`` key (``test.exact_match``, ``memory.peak_rss_mb``),
    or None where the key is missing or not a number."""
    value = metrics
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, Any]:
    """The versions a run records: python, the training libraries, peftlab and its git commit."""
    import importlib

    libraries = ("torch", "transformers", "peft", "lightning")
    return {"python": platform.python_version(),
            **{name: importlib.import_module(name).__version__ for name in libraries},
            "peftlab": _installed_version("peftlab"), "git_commit": git_commit()}


def _installed_version(name: str) -> str | None:
    """The installed distribution's version (pyproject.toml's), read without importing the package."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
