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
    from peftlab.reporting.intervals import t_quantile

    return t_quantile(df)


@dataclass
class Run:
    path: Path
    overrides: list[str]
    metrics: Optional[dict[str, Any]]
    status: str  # finished | diverged | failed | unfinished (only "finished" counts in the statistics)
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
    """A run folder as data: its overrides, metrics.json (its ``status``: a diverged run is not a
    finished one) or failed.json. A file that cannot be read stops the report with its name."""
    overrides = _read_file(folder / ".hydra" / "overrides.yaml", yaml.safe_load, list) or []
    if not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"{folder / '.hydra' / 'overrides.yaml'}: not a list of overrides")
    metrics = _read_file(folder / "metrics.json", json.loads, dict)
    if metrics is not None:
        status = metrics.get("status", "finished")
        status = status if isinstance(status, str) else "unreadable"
        reason = (metrics.get("diverged") or {}).get("reason") if isinstance(metrics.get("diverged"), dict) else None
        return Run(folder, overrides or metrics.get("overrides") or [], metrics, status, reason)
    record = _read_file(folder / "failed.json", json.loads, dict)
    if record is not None:
        return Run(folder, overrides or record.get("overrides") or [], None, "failed", record.get("error"))
    return Run(folder, overrides, None, "unfinished")


def _read_file(path: Path, parse, kind: type) -> Any:
    """``path`` parsed (None where it does not exist), or one line naming it."""
    if not path.is_file():
        return None
    try:
        value = parse(path.read_text())
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not readable ({str(err).splitlines()[0]})") from None
    if value is not None and not isinstance(value, kind):
        raise ConfigError(f"{path}: not readable (a {type(value).__name__}, not a {kind.__name__})")
    return value


def stats(values: list[float]) -> dict[str, Any]:
    """Mean, standard deviation, n and the 95% interval's half-width over seeds (Student t,
    reporting/intervals.py) of the finite values (a NaN or infinity a run reports is not a number to
    average)."""
    from peftlab.reporting.intervals import seeds_interval

    values = [v for v in values if math.isfinite(v)]
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "ci95": None}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if n > 1 else 0.0, "n": n,
            "ci95": seeds_interval(values).half}


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
