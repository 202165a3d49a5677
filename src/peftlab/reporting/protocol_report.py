"""A ``tune_then_test`` sweep in a report: its ``protocol.json`` read back as data, the search jobs
kept out of the test comparison, each group's search space, budget, choice and validation score, and
the equivalence margins stated before the runs (reporting/protocol.py runs the sweep)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from peftlab.errors import ConfigError
from peftlab.reporting.escape import md
from peftlab.reporting.protocol import FILE
from peftlab.reporting.runs import Run


@dataclass
class Record:
    """What reports read of a protocol.json."""

    path: Path
    data: dict[str, Any]

    @property
    def search_folders(self) -> set[Path]:
        return {Path(s["folder"]).resolve() for g in self.data["groups"] for s in g["search"]}


def read_records(inputs: Sequence[Path]) -> list[Record]:
    """Every protocol.json under the inputs, read as data (one line naming a file it cannot read)."""
    found = []
    for root in inputs:
        for path in sorted(Path(root).rglob(FILE)):
            try:
                data = json.loads(path.read_text())
                groups = data["groups"]
                assert isinstance(groups, list) and all(isinstance(g.get("search"), list) for g in groups)
                assert isinstance(data.get("margins", {}), dict)
            except (ValueError, KeyError, TypeError, AssertionError, AttributeError, OSError):
                raise ConfigError(f"{path}: not a readable tune_then_test record") from None
            found.append(Record(path, data))
    return found


def without_search_jobs(runs: list[Run], records: list[Record]) -> list[Run]:
    """The runs a test comparison reads: not the search jobs, which never read the test split."""
    search = set().union(*(r.search_folders for r in records)) if records else set()
    return [r for r in runs if r.path.resolve() not in search]


def to_markdown(records: list[Record]) -> str:
    """Each group's search space, budget, choice and validation score (the record's text escaped:
    a protocol.json is data)."""
    out = []
    for record in records:
        d = record.data
        metric, seeds = md(d["metric"]), _listed(d["search_seeds"])
        lines = ["", f"Selection on validation (hydra/sweeper=tune_then_test, {md(record.path)}): every group "
                 f"searched {md(d['budget'])} jobs (its settings at search seeds {seeds}), none of "
                 f"which read the test split; the best mean {metric} (of equal ones, the lower validation loss) chose "
                 f"the setting run at test seeds {_listed(d['test_seeds'])}. "
                 f"Stated before the runs ({md(d['stated_at'])}): the spaces, the budget, the metric"
                 + (" and the equivalence margins." if d.get("margins") else "."), "",
                 f"| group | search space | budget (jobs) | chosen | {metric} of the chosen (search mean) "
                 "| every setting's score |", "|---|---|---:|---|---:|---|"]
        for g in d["groups"]:
            space = md("; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in g["space"].items()))
            chosen = md(" ".join(g["chosen"])) if g["chosen"] else "— (no search job finished)"
            score = "—" if g["chosen_score"] is None else f"{g['chosen_score']:.4f}"
            each = md(", ".join(_score_cell(g, setting) for setting in g["settings"]))
            budget = md(g["budget"] * len(d["search_seeds"]))
            lines.append(f"| {md(g['group'])} | {space} | {budget} | {chosen} | {score} | {each} |")
        out.append("\n".join(lines) + "\n")
    return "".join(out)


def _listed(value: Any) -> str:
    """A list from the record as Python writes it, each item escaped."""
    return "[" + ", ".join(map(md, value)) + "]" if isinstance(value, list) else md(value)


def _score_cell(group: dict[str, Any], setting: list[str]) -> str:
    values = [s["value"] for s in group["search"] if s["setting"] == setting]
    shown = "/".join("failed" if v is None else f"{v:.4f}" for v in values)
    return f"{' '.join(o.split('=', 1)[1] for o in setting)}: {shown or '—'}"


def stated_margins(records: list[Record], runs: list[Run]) -> dict[str, float]:
    """The equivalence margins stated before the runs: those of the protocols, and those every
    finished run recorded alike (``margins=`` in its config, an experiment file's)."""
    margins: dict[str, float] = {}
    for record in records:
        margins.update({str(k): float(v) for k, v in (record.data.get("margins") or {}).items()})
    recorded = [r.metrics.get("margins") or {} for r in runs if r.status == "finished" and r.metrics]
    if recorded and all(m == recorded[0] for m in recorded) and isinstance(recorded[0], dict):
        margins.update({str(k): float(v) for k, v in recorded[0].items() if isinstance(v, (int, float))})
    return margins
