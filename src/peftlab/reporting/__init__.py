"""Reports over run folders, the library behind ``peftlab-report``: every run folder under the
inputs is read (``metrics.json``, ``.hydra/overrides.yaml``, ``logs/metrics.csv``), runs are grouped
by their overrides other than the seed, and each group is aggregated over seeds."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from peftlab.config import validate
from peftlab.config.commands import ReportSchema
from peftlab.errors import ConfigError
from peftlab.reporting import html, scores, spectra, subspace
from peftlab.reporting import protocol_report as protocol
from peftlab.reporting.claim_page import CLAIM_FILES, OVERVIEW_FILES, ClaimAnalysis, recorded_claim, write_overview
from peftlab.reporting.compare import as_records as pair_records
from peftlab.reporting.compare import compare as pairwise
from peftlab.reporting.compare import letters
from peftlab.reporting.compare import to_markdown as pairs_markdown
from peftlab.reporting.equivalence import Tost, as_records, equivalence
from peftlab.reporting.equivalence import to_markdown as tost_markdown
from peftlab.reporting.items import item_table
from peftlab.reporting.plots import PLOT_FILES, RL_PLOT, plot
from peftlab.reporting.provenance import provenance
from peftlab.reporting.provenance import to_markdown as provenance_markdown
from peftlab.reporting.runs import Group, Run, find_runs, group_runs, primary_metric
from peftlab.reporting.seed_budget import two_stage_groups
from peftlab.reporting.tables import table_rows, to_csv, to_latex, to_markdown
from peftlab.runs.files import atomic_path, write_json
from peftlab.runs.folders import check_no_link, claim_output, run_status
from peftlab.runs.locks import check_not_held
from peftlab.runs.metrics import metric_at

log = logging.getLogger("peftlab.report")
# every file a report writes: none is replaced without overwrite=true
REPORT_FILES = ("results.md", "results.csv", "results.tex", "report.json", html.HTML_FILE, *PLOT_FILES, RL_PLOT,
                *spectra.SPECTRA_FILES, spectra.SPECTRA_PLOT, *subspace.SUBSPACE_FILES, subspace.SUBSPACE_PLOT,
                *CLAIM_FILES)


def inputs_override(paths: list[str]) -> str:
    """The ``inputs=[...]`` override naming ``paths``, each quoted for Hydra's grammar."""
    quoted = ",".join("'" + p.replace("'", "\\'") + "'" for p in paths)
    return f"inputs=[{quoted}]"


def report_from_config(cfg: DictConfig, log_dir: Path) -> dict[str, Any]:
    """The work of ``peftlab-report`` and ``peftlab.report()``: the report goes to ``out_dir``, else
    to ``<input>/report`` for one input, else to the command's own folder ``log_dir``. With
    ``claims=[<report folders>]``: the overview of their claims (claims.md) instead."""
    options = validate(cfg, ReportSchema)
    if options.claims:
        out = Path(options.out_dir) if options.out_dir else Path(log_dir)
        if options.out_dir:
            claim_output(out, "out_dir", OVERVIEW_FILES)
        return write_overview([Path(p) for p in options.claims], out, options.overwrite)
    conf, inputs, out = report_target(cfg, log_dir)
    return write_report(inputs, out, conf)


def report_target(cfg: DictConfig, log_dir: Path) -> tuple[ReportSchema, list[Path], Path]:
    """(the validated options, the inputs, the folder the report goes to), that folder checked."""
    conf = validate(cfg, ReportSchema)
    if not conf.inputs:
        raise ConfigError("inputs: name at least one sweep or run folder (peftlab-report outputs/multiruns/<stamp>)")
    inputs = [Path(p) for p in conf.inputs]
    home = inputs[0] / "report" if len(inputs) == 1 else None
    if conf.out_dir and not (home and Path(conf.out_dir).absolute() == home.absolute()):
        out = Path(conf.out_dir)
        claim_output(out, "out_dir", REPORT_FILES)
    elif home:
        out = home
        _check_report_home(inputs[0])
        check_no_link(inputs[0], "report", "inputs")
    else:
        out = Path(log_dir)
    return conf, inputs, out


def _check_report_home(folder: Path) -> None:
    """``<input>/report`` only inside a finished run or a sweep or folder of runs: never inside a
    folder a command still works in, nor a run that was killed (resume= may continue it) or diverged."""
    check_not_held(folder, "inputs")
    is_run = ((folder / ".hydra").is_dir() or (folder / "config.yaml").is_file()) and not (
        folder / "multirun.yaml").exists()
    status = run_status(folder) if is_run else "finished"
    if status not in ("finished", "nan_metric"):
        raise ConfigError(f"inputs: {folder} holds a run that has not finished ({status or 'no metrics.json'}); "
                          "its report goes elsewhere (give out_dir=)")


def write_report(inputs: list[Path], out_dir: Path, options: Optional[ReportSchema] = None) -> dict[str, Any]:
    """``results.md``, ``results.csv``, ``results.tex``, ``results.html``, ``report.json`` and the
    plots into ``out_dir``, each written whole (a temporary file, then renamed); an earlier report
    there is replaced only with ``overwrite``. The options (``ReportSchema``) add:
    ``equivalence`` (TOST between every pair of groups, reporting/equivalence.py), ``compare``
    (pairwise tests of the primary metric with a compact letter display, reporting/compare.py),
    ``spectra`` (reporting/spectra.py), ``subspace`` (reporting/subspace.py) and ``scores``
    (reporting/scores.py: what ``peftlab-eval runs=`` measured on the runs)."""
    o = options or ReportSchema()
    f, analyses = findings(inputs, out_dir, o)
    groups, rows, metric, md = f.groups, f.rows, f.metric, f.markdown
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for analysis in analyses:
        text, written = analysis.write(out_dir, o.plots)
        md, files = md + text, files + written
    for name, text in (("results.md", md), ("results.csv", to_csv(rows)), ("results.tex", to_latex(rows, metric))):
        with atomic_path(out_dir / name, overwrite=True) as tmp:
            tmp.write_text(text)
    files += ["results.md", "results.csv", "results.tex"]
    if o.plots:
        files += plot(groups, rows, metric, out_dir, f.greater_is_better)
    if o.html:
        data = html.page_data(groups, rows, metric, f.greater_is_better, pair_records(f.pairs), as_records(f.tests))
        files.append(html.write(out_dir, data, f"peftlab report: {', '.join(str(p) for p in inputs)}"))
    # an earlier report's files this one does not write (overwrite=true) would pass for its own
    for name in REPORT_FILES:
        if name not in files and name != "report.json" and (out_dir / name).exists():
            (out_dir / name).unlink()
    # last: a report.json says the report is complete
    claim = next((a.record() for a in analyses if isinstance(a, ClaimAnalysis)), None)
    write_json(out_dir / "report.json", {**_summary(inputs, f.runs, groups, rows, metric, f.greater_is_better, files),
                                         "provenance": f.origin,
                                         **({"claim": {k: claim[k] for k in ("name", "verdict", "resolve")}}
                                            if claim else {}),
                                         **({"protocols": [r.data for r in f.records]} if f.records else {}),
                                         **({"equivalence": as_records(f.tests)} if f.tests else {}),
                                         **({"comparisons": pair_records(f.pairs)} if o.compare else {})})
    print(md, end="")
    log.info("%d runs in %d groups -> %s", len(f.runs), len(groups), out_dir)
    return json.loads((out_dir / "report.json").read_text())


def findings(inputs: list[Path], out_dir: Path, o: ReportSchema) -> tuple[Findings, list[Any]]:
    """Everything the report says, and its analyses (spectra, subspace), computed in memory before
    the first file is written, with every mistake found: (the findings, the analyses)."""
    existing = [name for name in REPORT_FILES if (out_dir / name).exists()]
    if existing and not o.overwrite:
        what = "a report" if "report.json" in existing else f"files a report writes ({', '.join(existing)})"
        raise ConfigError(f"out_dir: {out_dir} already holds {what}; it is never overwritten "
                          "(overwrite=true replaces it, or give another out_dir=)")
    f = analyse(inputs, o)
    analyses = ([spectra.analyse(f.groups)] if o.spectra else []) + (
        [subspace.analyse(f.runs, list(o.subspace))] if o.subspace else [])
    every_run = find_runs(inputs)  # the search jobs too: they record the claim, and their time is its cost
    claim = recorded_claim(every_run)
    if claim is not None:
        analyses.append(ClaimAnalysis(claim, f.groups, f.runs, every_run, f.records, f.origin))
    return f, analyses


@dataclass
class Findings:
    """What a report says, computed before any file is written."""

    runs: list[Run]
    groups: list[Group]
    metric: str
    greater_is_better: bool
    rows: list[dict[str, Any]]
    pairs: list[Any]
    tests: list[Tost]
    records: list[Any]  # tune_then_test protocols
    origin: dict[str, Any]
    markdown: str


def analyse(inputs: list[Path], o: ReportSchema) -> Findings:
    """Read the runs and compute every table and test of the report (results.md's text with them)."""
    records = protocol.read_records(inputs)
    runs = protocol.without_search_jobs(find_runs(inputs), records)  # the search jobs never read the test split
    scored = scores.attach(runs, list(o.scores))
    groups = group_runs(runs)
    metric, greater_is_better = primary_metric(runs)
    tables = {g.setting: item_table(g, metric) for g in groups}
    rows = table_rows(groups, metric, tables, two_stage_groups(inputs))
    pairs = pairwise(groups, f"test.{metric}", tables) if o.compare else []
    if o.compare:
        cld = letters(groups, pairs, f"test.{metric}", greater_is_better)
        for row in rows:
            row["letters"] = cld.get(row["setting"], "")
    origin = provenance(inputs, runs, report_command(inputs, o))
    md = provenance_markdown(origin) + to_markdown(rows, metric) + protocol.to_markdown(records)
    md += pairs_markdown(pairs, metric) if o.compare else ""
    md += scores.to_markdown(groups, scored)
    stated = protocol.stated_margins(records, runs)
    tests = equivalence_tests(runs, groups, {**stated, **o.margins(metric)}, stated)
    md += tost_markdown(tests) if tests else ""
    return Findings(runs, groups, metric, greater_is_better, rows, pairs, tests, records, origin, md)


def report_command(inputs: list[Path], options: ReportSchema) -> str:
    """The command line that makes this report: its inputs and every option not at its default."""
    import dataclasses

    set_ = [f"{f.name}={_option_text(getattr(options, f.name))}" for f in dataclasses.fields(ReportSchema)
            if f.name not in ("inputs", "overwrite", "out_dir")
            and getattr(options, f.name) != (f.default_factory() if f.default is dataclasses.MISSING else f.default)]
    return " ".join(["peftlab-report", *map(str, inputs), *set_])


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{v}" for k, v in value.items()) + "}"
    return str(value)


def equivalence_tests(runs: list[Run], groups: list[Group], margins: dict[str, float],
                      stated: Optional[dict[str, float]] = None) -> list[Tost]:
    """TOST for every pair of groups, each key checked to be a number some run reports."""
    for key in margins:
        if not any(metric_at(r.metrics, key) is not None for r in runs if r.metrics):
            raise ConfigError(f"equivalence.{key}: no run reports this number in its metrics.json "
                              "(a dotted key: test.<metric>, forgetting.delta, train.tokens_per_s, ...)")
    return equivalence(groups, margins, stated)


def _summary(inputs, runs, groups, rows, metric, greater_is_better, files) -> dict[str, Any]:
    return {"inputs": [str(p) for p in inputs], "metric": metric, "greater_is_better": greater_is_better,
            "runs": len(runs), "finished": sum(r.status == "finished" for r in runs),
            "not_finished": [{"run": str(r.path), "status": r.status, "error": r.error}
                             for r in runs if r.status != "finished"],
            "groups": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], "files": files}
