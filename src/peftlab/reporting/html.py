"""``results.html``: the report as one self-contained page that opens with no network (no script,
style or font from elsewhere).

The page holds the report's numbers as JSON and draws them with a little plain JavaScript: sortable
tables (the groups, the comparisons, the equivalence tests), the Pareto plot (the metric against
trainable parameters, training time or peak memory; hover a point for its settings) and the
learning curves of every run. Settings come from run folders, which are data: the page puts them in
as text (``textContent``), never as markup.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

from peftlab.reporting.plots import pareto_front, run_curves
from peftlab.reporting.runs import Group

HTML_FILE = "results.html"
# the Pareto plot's x axes: (row key, label, log scale)
X_AXES = (("trainable", "trainable parameters", True), ("train_wall_s_mean", "training time (s)", False),
          ("peak_rss_mb_mean", "peak RSS (MiB)", False))


def page_data(groups: list[Group], rows: list[dict[str, Any]], metric: str, greater_is_better: bool,
              comparisons: list[dict[str, Any]], equivalence: list[dict[str, Any]]) -> dict[str, Any]:
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    fronts = {}
    for key, _, _ in X_AXES:
        ok = [i for i, r in enumerate(public) if r.get(key) is not None and r.get(f"{metric}_mean") is not None]
        front = pareto_front([(public[i][key], public[i][f"{metric}_mean"]) for i in ok], greater_is_better)
        fronts[key] = [ok[i] for i in front]
    runs = [{"group": gi, "setting": g.setting, "seed": r.seed, "path": str(r.path),
             **{key: sorted(points.items()) for key, points in run_curves(r).items()}}
            for gi, g in enumerate(groups) for r in g.finished]
    return {"metric": metric, "greater_is_better": greater_is_better, "rows": public, "fronts": fronts,
            "axes": [{"key": k, "label": label, "log": log} for k, label, log in X_AXES], "runs": runs,
            "comparisons": comparisons, "equivalence": equivalence}


def render(data: dict[str, Any], title: str) -> str:
    """The page (results_page.html, beside this module) with the title and the data filled in."""
    page = (Path(__file__).parent / "results_page.html").read_text(encoding="utf-8")
    fill = {"__TITLE__": html.escape(title), "__DATA__": script_json(data)}
    # one pass: a value is never searched for the other placeholder
    return re.sub("__TITLE__|__DATA__", lambda m: fill[m.group(0)], page)


def finite(value: Any) -> Any:
    """``value`` with every NaN and infinity made None: JSON has no such numbers (the page shows —)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def script_json(data: Any) -> str:
    """JSON safe inside a <script> element: "<", ">" and "&" written as \\u escapes (which JSON reads
    back as the same characters), so no text from a run folder can close the element or open a
    comment or another script in the HTML parser's eyes."""
    text = json.dumps(finite(data), default=str, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def write(out_dir: Path, data: dict[str, Any], title: str) -> str:
    from peftlab.runs.files import atomic_path

    with atomic_path(out_dir / HTML_FILE, overwrite=True) as tmp:
        tmp.write_text(render(data, title), encoding="utf-8")
    return HTML_FILE
