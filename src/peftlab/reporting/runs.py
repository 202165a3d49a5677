"""Reading run folders back for reports: finding them, their settings, grouping over seeds, and
the statistics of each group (mean, standard deviation, n, Student t 95% interval)."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from peftlab.errors import ConfigError
from peftlab.runs.metrics import metric_at

# overrides that say where or how a run ran, not what it is
_NOT_A_SETTING = ("seed=", "hydra.", "trainer.enable_progress_bar=", "paths.", "zero_shot=", "merge_after=",
                  "save_adapter=", "hardware.threads=")


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.975, df))


@dataclass
class Run:
    path: Path
    overrides: list[str]
    metrics: Optional[dict[str, Any]]
    status: str  # finished | failed | unfinished
    error: Optional[str] = None

    @property
    def settings(self) -> tuple[str, ...]:
        return tuple(sorted(o for o in self.overrides if not o.startswith(_NOT_A_SETTING)))

    @property
    def setting(self) -> str:
        return " ".join(self.settings) or "(defaults)"

    @property
    def seed(self) -> Optional[int]:
        if self.metrics:
            return self.metrics.get("seed")
        return next((int(o.split("=", 1)[1]) for o in self.overrides if o.startswith("seed=")), None)


def find_runs(inputs: list[Path]) -> list[Run]:
    """Every run folder at or under the inputs: a folder with .hydra/config.yaml or metrics.json."""
    folders: list[Path] = []
    for root in inputs:
        if not root.exists():
            raise ConfigError(f"inputs: no such folder: {root}")
        markers = [*root.rglob(".hydra/config.yaml"), *root.rglob("metrics.json"), *root.rglob("failed.json")]
        for marker in sorted(markers):
            folder = marker.parent.parent if marker.parent.name == ".hydra" else marker.parent
            if folder not in folders and not _is_sweep_root(folder):
                folders.append(folder)
    if not folders:
        raise ConfigError(f"inputs: no run folders under {', '.join(map(str, inputs))}")
    return [read_run(f) for f in sorted(folders, key=_job_order)]


def _is_sweep_root(folder: Path) -> bool:
    return (folder / "multirun.yaml").exists() and not (folder / "metrics.json").exists()


def _job_order(folder: Path):
    return (str(folder.parent), int(folder.name) if folder.name.isdigit() else 10**9, folder.name)


def read_run(folder: Path) -> Run:
    overrides_file = folder / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) or [] if overrides_file.exists() else []
    metrics_file = folder / "metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        return Run(folder, overrides or metrics.get("overrides", []), metrics, "finished")
    failed = folder / "failed.json"
    if failed.exists():
        record = json.loads(failed.read_text())
        return Run(folder, overrides or record.get("overrides", []), None, "failed", record.get("error"))
    return Run(folder, overrides, None, "unfinished")


def stats(values: list[float]) -> dict[str, Any]:
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "ci95": None}
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    half = t95(n - 1) * std / math.sqrt(n) if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "ci95": half}


@dataclass
class Group:
    setting: str
    runs: list[Run] = field(default_factory=list)

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status == "finished"]

    def stat(self, key: str) -> dict[str, Any]:
        return stats([v for r in self.finished if (v := metric_at(r.metrics, key)) is not None])

    @property
    def status(self) -> str:
        bad = [r for r in self.runs if r.status != "finished"]
        if not bad:
            return "ok"
        kinds = sorted({r.status for r in bad})
        return f"{len(bad)} of {len(self.runs)} {'/'.join(kinds)}"

    @property
    def label(self) -> str:
        m = self.finished[0].metrics if self.finished else {}
        return f"{m.get('method', '?')}" if m else self.setting


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs with the same settings (overrides but the seed) form a group, named by the settings
    that set it apart: those every run shares are left out of the name."""
    common = set.intersection(*(set(r.settings) for r in runs)) if len(runs) > 1 else set()
    groups: dict[tuple[str, ...], Group] = {}
    for r in runs:
        name = " ".join(o for o in r.settings if o not in common) or r.setting
        groups.setdefault(r.settings, Group(name)).runs.append(r)
    return list(groups.values())


def primary_metric(runs: list[Run]) -> tuple[str, bool]:
    """The task's primary metric and whether greater is better, as the runs' metrics.json files
    name them (the test loss, lower is better, where none does)."""
    for r in runs:
        if r.metrics and r.metrics.get("primary_metric"):
            return r.metrics["primary_metric"], bool(r.metrics.get("greater_is_better", True))
    return "loss", False
