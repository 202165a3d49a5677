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


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit() -> str | None:
    return _git("rev-parse", "HEAD") or None


def git_dirty() -> bool | None:
    """Whether the code of the checkout peftlab runs from (``src/``, ``conf/``, ``pyproject.toml``)
    differs from its commit, which then does not say exactly which code ran; None outside a git
    checkout (an installed wheel). Changes to docs, tests or scripts do not count."""
    status = _git("status", "--porcelain", "--untracked-files=all", "--", ":/src", ":/conf", ":/pyproject.toml")
    return None if status is None else bool(status)


def versions() -> dict[str, Any]:
    """The versions a run records: python, the training libraries, peftlab and its git commit, and
    the user's plug-ins it loaded (module -> where from)."""
    import importlib

    from peftlab.config.user_plugins import loaded

    libraries = ("torch", "transformers", "peft", "lightning")
    commit = git_commit()
    return {"python": platform.python_version(),
            **{name: importlib.import_module(name).__version__ for name in libraries},
            "peftlab": _installed_version("peftlab"), "git_commit": commit,
            "git_dirty": git_dirty() if commit else None, "plugins": loaded()}


def machine() -> dict[str, Any]:
    """The machine a run ran on, as reports and results pages state it: the CPU's model and logical
    cores, the memory, the GPU (if any) and the operating system. Nothing that names the host."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    gpu = None
    import torch

    if torch.cuda.is_available():
        gpu = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory, "gpu": gpu, "os": platform.platform()}


def describe_machine(m: dict[str, Any]) -> str:
    """A machine record in a few words: "AMD EPYC 9R14 (2 cores, 23.4 GiB), no GPU"."""
    parts = [f"{m.get('cores')} cores"] + ([f"{m['memory_gib']} GiB"] if m.get("memory_gib") else [])
    return f"{m.get('cpu') or 'unknown CPU'} ({', '.join(parts)}), " + (m.get("gpu") or "no GPU")


def _installed_version(name: str) -> str | None:
    """The installed distribution's version (pyproject.toml's), read without importing the package."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
