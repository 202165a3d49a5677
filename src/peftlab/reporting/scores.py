"""Scores a report takes from ``peftlab-eval runs=`` (``scores=[<eval folder>]``): every run of the
report that such an evaluation scored gains ``scored.<task>.<metric>`` numbers, which the report
aggregates per group like its own metrics (and which ``equivalence=`` may name). The evaluation
folder is data: its eval.json is parsed, never run."""

from __future__ import annotations

import json
import math
from pathlib import Path

from peftlab.errors import ConfigError
from peftlab.reporting.escape import md
from peftlab.reporting.runs import Group, Run, _read_file


def attach(runs: list[Run], folders: list[str]) -> list[str]:
    """Put each evaluation's scores into the runs they belong to (matched by run folder); returns
    the ``scored.<task>.<metric>`` keys, in order. A folder that scored none of the runs is an error."""
    by_path = {r.path.resolve(): r for r in runs if r.metrics is not None}
    keys: list[str] = []
    for folder in folders:
        path = Path(folder) / "eval.json"
        record = _read_file(path, json.loads, dict)
        rows = None if record is None else record.get("runs")
        if not isinstance(rows, list):
            raise ConfigError(f"scores: {path} is not the eval.json of a peftlab-eval runs=[...] evaluation")
        matched = 0
        for row in rows:
            if not (isinstance(row, dict) and isinstance(row.get("metrics"), dict) and isinstance(row.get("task"), str)
                    and isinstance(row.get("run_dir"), str)):
                raise ConfigError(f"scores: {path}: a row without run_dir, task and metrics")
            run = by_path.get(Path(row["run_dir"]).resolve())
            if run is None:
                continue
            matched += 1
            numbers = {k: float(v) for k, v in row["metrics"].items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            run.metrics.setdefault("scored", {})[row["task"]] = numbers
            keys += [f"scored.{row['task']}.{k}" for k in numbers if f"scored.{row['task']}.{k}" not in keys]
        if not matched:
            raise ConfigError(f"scores: {path} scored none of the report's runs")
    return keys


def to_markdown(groups: list[Group], keys: list[str]) -> str:
    """One row per group, one column per scored number: mean ± std (n)."""
    if not keys:
        return ""
    lines = ["", "Scores from peftlab-eval runs=[...] (mean ± std over seeds, n):", "",
             "| setting | " + " | ".join(map(md, keys)) + " |", "|---|" + "---:|" * len(keys)]
    for g in groups:
        cells = []
        for key in keys:
            s = g.stat(key)
            cells.append("—" if s["mean"] is None else f"{s['mean']:.4f} ± {s['std']:.4f} ({s['n']})")
        lines.append(f"| {md(g.setting)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
