"""Reports over run folders, the library behind ``peftlab-report``: every run folder under the
inputs is read (``metrics.json``, ``.hydra/overrides.yaml``, ``logs/metrics.csv``), runs are grouped
by their overrides other than the seed, and each group is aggregated over seeds."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from peftlab.outputs import write_json
from peftlab.reporting.plots import plot
from peftlab.reporting.runs import find_runs, group_runs, primary_metric
from peftlab.reporting.tables import table_rows, to_csv, to_latex, to_markdown

log = logging.getLogger("peftlab.report")


def write_report(inputs: list[Path], out_dir: Path, plots: bool = True) -> dict[str, Any]:
    """``results.md``, ``results.csv``, ``results.tex``, ``report.json`` and the plots into ``out_dir``."""
    runs = find_runs(inputs)
    groups = group_runs(runs)
    metric, greater_is_better = primary_metric(runs)
    rows = table_rows(groups, metric)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = to_markdown(rows, metric)
    (out_dir / "results.md").write_text(md)
    (out_dir / "results.csv").write_text(to_csv(rows))
    (out_dir / "results.tex").write_text(to_latex(rows, metric))
    files = ["results.md", "results.csv", "results.tex"]
    if plots:
        files += plot(groups, rows, metric, out_dir, greater_is_better)
    summary = {"inputs": [str(p) for p in inputs], "metric": metric, "greater_is_better": greater_is_better,
               "runs": len(runs), "finished": sum(r.status == "finished" for r in runs),
               "not_finished": [{"run": str(r.path), "status": r.status, "error": r.error}
                                for r in runs if r.status != "finished"],
               "groups": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], "files": files}
    write_json(out_dir / "report.json", summary)
    print(md, end="")
    log.info("%d runs in %d groups -> %s", len(runs), len(groups), out_dir)
    return summary
