"""Where a report's figures come from: the code (peftlab's version and git commit, and whether the
checkout had changes), the commands that made the runs and the report, the machines and the dates
of the runs, all read from the runs' own records. ``peftlab-report`` writes this at the head of
every report, so that a results page built from one names its code."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Optional

import yaml

from peftlab.reporting.escape import md, md_code
from peftlab.reporting.runs import Run
from peftlab.runs.metrics import describe_machine


def provenance(inputs: list[Path], runs: list[Run], report_command: str) -> dict[str, Any]:
    """What report.json records under ``provenance``, from the runs' metrics.json and the sweeps'
    multirun.yaml."""
    records = [r.metrics for r in runs if r.metrics]
    code = Counter(_code(m.get("versions") or {}) for m in records)
    machines = Counter(describe_machine(m["machine"]) for m in records if isinstance(m.get("machine"), dict))
    started = sorted(str(m["started_at"]) for m in records if m.get("started_at"))
    finished = sorted(str(m["finished_at"]) for m in records if m.get("finished_at"))
    undated = sum(1 for m in records if not m.get("finished_at"))
    return {"code": dict(code), "machines": dict(machines), "first_start": started[0] if started else None,
            "last_finish": finished[-1] if finished else None, "undated_runs": undated,
            "tuned_on_test": sum(1 for m in records if m.get("tune_on_test")),
            "commands": _commands(inputs, runs), "report": report_command}


def _code(versions: dict[str, Any]) -> str:
    commit = versions.get("git_commit")
    if not commit:
        return f"peftlab {versions.get('peftlab') or '?'} (no git commit recorded)"
    dirty = {True: " with uncommitted changes", False: "", None: ""}[versions.get("git_dirty")]
    return f"peftlab {versions.get('peftlab') or '?'} at commit {str(commit)[:12]}{dirty}"


def _commands(inputs: list[Path], runs: list[Run]) -> list[str]:
    """The sweeps' command lines (from each multirun.yaml) and those of runs outside a sweep."""
    commands, covered = [], []
    for root in inputs:
        for path in sorted(Path(root).rglob("multirun.yaml")):
            overrides = _sweep_overrides(path)
            if overrides is not None:
                commands.append(" ".join(["peftlab-train -m", *overrides]))
                covered.append(path.parent.resolve())
    for r in runs:
        if not any(r.path.resolve().is_relative_to(folder) for folder in covered):
            line = " ".join(["peftlab-train", *r.overrides])
            if line not in commands:
                commands.append(line)
    return commands


def _sweep_overrides(path: Path) -> Optional[list[str]]:
    try:
        data = yaml.safe_load(path.read_text())
        overrides = data["hydra"]["overrides"]["task"]
    except (yaml.YAMLError, KeyError, TypeError, OSError, UnicodeDecodeError):
        return None
    return [str(o) for o in overrides] if isinstance(overrides, list) else None


def to_markdown(p: dict[str, Any]) -> str:
    """The report's opening lines: code, dates, machines, commands (all read from the runs: escaped)."""
    def counted(counter: dict[str, int]) -> str:
        if len(counter) == 1:
            return md(next(iter(counter)))
        return "; ".join(f"{md(what)} ({n} runs)" for what, n in sorted(counter.items(), key=lambda kv: -kv[1]))

    dates = ("not recorded" if not p["last_finish"]
             else f"{md(p['first_start'] or '?')} to {md(p['last_finish'])}")
    if p["undated_runs"] and p["last_finish"]:
        dates += f" ({p['undated_runs']} runs undated)"
    lines = [f"- code: {counted(p['code']) or 'not recorded'}",
             f"- runs: {dates}, on {counted(p['machines']) or 'a machine not recorded'}",
             *[f"- command: {md_code(c)}" for c in p["commands"][:6]],
             *([f"- and {len(p['commands']) - 6} more commands (report.json)"] if len(p["commands"]) > 6 else []),
             f"- report: {md_code(p['report'])}"]
    if p["tuned_on_test"]:
        lines.append(f"- **tuned on the test split**: {p['tuned_on_test']} runs were chosen by a sweeper optimising a "
                     "test.* objective (tune_on_test=true); their test figures are optimistic")
    return "\n".join(lines) + "\n\n"
