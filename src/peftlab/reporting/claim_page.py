"""A claim's report (``claim.md``, ``claim.json``, ``claim.png`` beside results.md) and the overview
of several (``peftlab-report claims=[<report folders>]`` -> ``claims.md``): the paper's claim, what
was measured with its intervals, the verdict, what would resolve an inconclusive one, the scale and
the cost of the runs, and where they come from (code, machine, commands)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from peftlab.errors import ConfigError
from peftlab.reporting.claim_runs import PartResult, judge_claim, overall
from peftlab.reporting.escape import md
from peftlab.reporting.provenance import to_markdown as provenance_markdown
from peftlab.reporting.runs import Group, Run
from peftlab.runs.files import atomic_path, write_json
from peftlab.runs.metrics import metric_at

CLAIM_FILES = ("claim.md", "claim.json", "claim.png")
OVERVIEW_FILES = ("claims.md", "claims.json")
RULES = {
    "equivalent": "TOST at 0.05, Holm over the comparisons of each metric: reproduced when every difference's 90% "
                  "interval lies inside ±{m}; not reproduced when a difference lies beyond ±{m} (one-sided test at "
                  "0.05); inconclusive otherwise",
    "better": "reproduced when the 95% interval of every difference lies on the claimed side of 0 ({d} is better; "
              "two-sided tests at 0.05, Holm); not reproduced when one lies on the other side, or is shown smaller "
              "than ±{m} (TOST at 0.05: too small to matter); inconclusive otherwise",
    "not_worse": "non-inferiority ({d} is better): reproduced when the 95% interval of how much worse the first is "
                 "lies below {m} for every comparison (one-sided 0.025, Holm); not reproduced when one lies wholly "
                 "above {m}; inconclusive otherwise",
    "correlated": "Pearson's r over the runs with its Fisher-z 95% interval: reproduced when the interval lies at or "
                  "above {m}, not reproduced when it lies below {m}, inconclusive when it holds {m}",
    "ratio": "each group's optimum bracketed by its search (the grid points just outside the settings whose "
             "validation score the best's does not beat at 0.05, paired t over the search seeds; open at the grid's "
             "end): reproduced when the ratio's interval lies within [{e}/{m}, {e}×{m}], not reproduced when it "
             "lies outside, inconclusive otherwise",
}


def recorded_claim(runs: list[Run]) -> Optional[dict[str, Any]]:
    """The claim every finished run records (None where none does); one line naming two that differ."""
    finished = [r for r in runs if r.status == "finished" and r.metrics]
    found = [(r, r.metrics.get("claim")) for r in finished]
    if not any(c for _, c in found):
        return None
    first = found[0]
    for run, claim in found[1:]:
        if claim != first[1]:
            raise ConfigError(f"claim: the runs record different claims: {first[0].path} ({_name(first[1])}) and "
                              f"{run.path} ({_name(claim)}); report each claim's runs on their own")
    return first[1]


def _name(claim: Any) -> str:
    return f"claim {claim.get('name')}" if isinstance(claim, dict) else "no claim"


class ClaimAnalysis:
    """A claim judged on the report's runs, written by ``write`` (the report's analyses interface)."""

    def __init__(self, claim: dict[str, Any], groups: list[Group], runs: list[Run], every_run: list[Run],
                 records: list[Any], origin: dict[str, Any]):
        self.claim, self.origin = claim, origin
        self.results = judge_claim(claim, groups, runs, records)
        self.verdict, self.resolve = overall(self.results)
        self.cost, self.scale = cost(every_run), scale(groups, runs)

    def record(self) -> dict[str, Any]:
        return {"name": self.claim["name"], "paper": self.claim["paper"], "says": self.claim["says"],
                "budget": self.claim["budget"], "claim": self.claim, "verdict": self.verdict, "resolve": self.resolve,
                "measured": [summary(r) for r in self.results], "parts": [_part_record(r) for r in self.results],
                "scale": self.scale, "cost": self.cost, "provenance": self.origin}

    def write(self, out_dir: Path, plots: bool) -> tuple[str, list[str]]:
        files = ["claim.md", "claim.json"]
        if plots and any(r.points for r in self.results):
            from peftlab.reporting.plots import claim_figure

            claim_figure(self.results, out_dir / "claim.png")
            files.append("claim.png")
        with atomic_path(out_dir / "claim.md", overwrite=True) as tmp:
            tmp.write_text(self.markdown("claim.png" in files))
        write_json(out_dir / "claim.json", self.record())
        return (f"\nClaim {md(self.claim['name'])} ({md(self.claim['paper'])}): **{self.verdict}** (claim.md)\n",
                files)

    def markdown(self, figure: bool) -> str:
        c = self.claim
        lines = [f"# Claim {md(c['name'])}: {self.verdict}", "", provenance_markdown(self.origin).rstrip(), "",
                 f"- **Paper**: {md(c['paper'])}", f"- **The claim, as the paper puts it**: {md(c['says'])}",
                 f"- **Budget**: {md(c['budget'])}: {md(scale_line(self.scale))}",
                 f"- **Cost**: {cost_line(self.cost)}",
                 "", f"## Verdict: **{self.verdict}**", ""]
        if self.resolve:
            lines += [f"Inconclusive at this budget. What would resolve it: {md(self.resolve)}.", ""]
        for i, r in enumerate(self.results):
            lines += _part_markdown(r, i if len(self.results) > 1 else None)
        if figure:
            lines += ["![the claim's figure: each part's measured points](claim.png)", ""]
        return "\n".join(lines) + "\n"


def _part_markdown(r: PartResult, index: Optional[int]) -> list[str]:
    p = r.part
    title = f"## Part {index + 1}: " if index is not None else "## The test: "
    lines = [f"{title}{p['kind']} on {md(p['metric'])}" + (f" against {md(p['against'])}" if p.get("against") else ""),
             "", *([f"The paper: {md(p['says'])}", ""] if index else []),
             f"Rule, stated in the experiment file before the runs: {md(rule(p))}.", ""]
    if p.get("matched"):
        lines += [f"At matched gain: the groups on each family's front of {md(p['matched']['by'])} against "
                  f"{md(p['metric'])}, paired when their mean {md(p['matched']['by'])} lie within "
                  f"{p['matched']['within']:g} (reporting/claim_runs.py).", ""]
    if r.correlation is not None:
        c = r.correlation
        shown = "—" if c["r"] is None else f"{c['r']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
        note = "" if c["spearman"] is None else f" (Spearman's rho {c['spearman']:+.3f}, a note)"
        lines += [f"Pearson's r over {c['n']} runs: {shown}{note}.", ""]
    if r.comparisons:
        matched = bool(p.get("matched"))
        ratio = p["kind"] == "ratio"
        lines += ["| first | second | metric | " + ("search seeds | best (first) | best (second) | ratio of the best"
                                                    if ratio else "n | mean (first) | mean (second) | difference "
                                                    "(first − second)")
                  + " | interval | verdict | why | would resolve |" + (" mean gain (first, second) |" * matched),
                  "|---|---|---|---|---:|---:|---:|---|---|---|---|" + ("---|" if matched else "")]
        lines += [f"| {md(c.first)} | {md(c.second)} | {md(c.metric)} | {c.n[0]}, {c.n[1]} | {_num(c.means[0])} "
                  f"| {_num(c.means[1])} | {_num(c.difference)} | {_interval(c.judged.interval, c.judged.level)} "
                  f"| **{c.judged.verdict}** | {md(c.judged.reason)} | {md(c.judged.resolve) or '—'} |"
                  + (f" {_num(c.gains[0])}, {_num(c.gains[1])} |" if matched else "") for c in r.comparisons]
        lines.append("")
    if r.correlation is not None:
        j = r.judged[0]
        lines += [f"Verdict: **{j.verdict}** ({md(j.reason)})" + (f"; would resolve: {md(j.resolve)}" if j.resolve
                                                                   else "") + ".", ""]
    return lines


def rule(part: dict[str, Any]) -> str:
    return RULES[part["kind"]].format(m=f"{part['margin']:g}", d=part.get("direction") or "",
                                      e=f"{part.get('expected') or 0:g}")


def summary(r: PartResult) -> str:
    """What a part measured, in one line (the overview's cell)."""
    if r.correlation is not None:
        c = r.correlation
        if c["r"] is None:
            return f"r: no estimate ({c['n']} runs)"
        return f"r = {c['r']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}] over {c['n']} runs"
    cells = []
    for c in r.comparisons:
        what = "ratio" if r.part["kind"] == "ratio" else f"{c.metric} {c.first} − {c.second}"
        cells.append(f"{what} {_num(c.difference)} {_interval(c.judged.interval, c.judged.level)}")
    return "; ".join(cells)


def _part_record(r: PartResult) -> dict[str, Any]:
    return {"where": r.where, "kind": r.part["kind"], "metric": r.part["metric"], "margin": r.part["margin"],
            "rule": rule(r.part), "verdict": r.verdict, "needed": r.needed, "resolve": r.resolve,
            "correlation": r.correlation, "points": r.points,
            "comparisons": [{**{k: v for k, v in asdict(c).items() if k != "judged"}, **asdict(c.judged),
                             "resolve": c.judged.resolve} for c in r.comparisons]}


def _num(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.4g}"


def _interval(ci: Optional[tuple[float, float]], level: Optional[float]) -> str:
    if ci is None:
        return "—"
    return ("search bracket" if level is None else f"{level:.0%}") + f": [{ci[0]:.4g}, {ci[1]:.4g}]"


def cost(runs: list[Run]) -> dict[str, Any]:
    """Each run's time from its start to its record (metrics.json total_wall_s; train.wall_s, training
    alone, where a run lacks it), summed, and times its threads (core-seconds)."""
    timed = [(r, metric_at(r.metrics, "total_wall_s") or metric_at(r.metrics, "train.wall_s")) for r in runs
             if r.metrics]
    timed = [(r, t) for r, t in timed if t is not None]
    wall = sum(t for _, t in timed)
    core = sum(t * (metric_at(r.metrics, "threads") or 1) for r, t in timed)
    return {"runs": len(timed), "not_timed": len(runs) - len(timed), "wall_s": round(wall, 1), "core_s": round(core, 1),
            "counts": "each run's total_wall_s (start to metrics.json: loading, training, evaluation and the measures; "
                      "train.wall_s where a run lacks it), summed; core-seconds: times the run's threads"}


def cost_line(c: dict[str, Any]) -> str:
    missing = f"; {c['not_timed']} runs record no time (failed or unfinished)" if c["not_timed"] else ""
    return (f"{c['wall_s'] / 3600:.2f} h of run time over {c['runs']} runs (search jobs included), "
            f"{c['core_s'] / 3600:.2f} core-hours{missing}. It counts {c['counts']}")


def scale(groups: list[Group], runs: list[Run]) -> dict[str, Any]:
    finished = [r for r in runs if r.status == "finished" and r.metrics]
    return {"models": sorted({str(r.metrics.get("model")) for r in finished}),
            "steps": sorted({int(s) for r in finished if (s := metric_at(r.metrics, "train.steps")) is not None}),
            "groups": len(groups), "runs": len(finished),
            "seeds_per_group": sorted(Counter(len(g.finished) for g in groups).items())}


def scale_line(s: dict[str, Any]) -> str:
    seeds = ", ".join(f"{k} of {n} seeds" for n, k in s["seeds_per_group"])
    return (f"{', '.join(s['models']) or 'no finished run'}, {s['runs']} compared runs in {s['groups']} groups "
            f"({seeds}), {'/'.join(map(str, s['steps'])) or '?'} training steps")


def write_overview(folders: list[Path], out_dir: Path, overwrite: bool) -> dict[str, Any]:
    """``claims.md`` and ``claims.json`` in ``out_dir``: every claim report's verdict in one table."""
    records = []
    for folder in folders:
        path = Path(folder) / "claim.json"
        try:
            records.append({**json.loads(path.read_text()), "folder": str(folder)})
        except (OSError, ValueError):
            raise ConfigError(f"claims: {folder} holds no readable claim.json (the report of a claim experiment: "
                              "peftlab-report <its sweep folders>)") from None
    existing = [n for n in OVERVIEW_FILES if (out_dir / n).exists()]
    if existing and not overwrite:
        raise ConfigError(f"out_dir: {out_dir} already holds {', '.join(existing)}; it is never overwritten "
                          "(overwrite=true replaces it, or give another out_dir=)")
    lines = ["# Published claims: the verdicts", "",
             "| claim | paper | verdict | measured (interval) | budget | would resolve | run time | report |",
             "|---|---|---|---|---|---|---:|---|"]
    for r in records:
        lines.append(f"| {md(r['name'])} | {md(r['paper'])} | **{md(r['verdict'])}** | {md('; '.join(r['measured']))} "
                     f"| {md(r['budget'])}: {md(scale_line(r['scale']))} | {md(r['resolve']) or '—'} "
                     f"| {r['cost']['wall_s'] / 3600:.2f} h | {md(r['folder'])}/claim.md |")
    total = sum(r["cost"]["wall_s"] for r in records)
    lines += ["", f"{len(records)} claims; {total / 3600:.2f} h of run time in all (each page says what it counts).",
              ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "claims.md", overwrite=True) as tmp:
        tmp.write_text("\n".join(lines))
    summary_ = {"claims": [{k: r[k] for k in ("name", "paper", "verdict", "measured", "budget", "resolve", "folder")}
                           for r in records], "wall_s": round(total, 1)}
    write_json(out_dir / "claims.json", summary_)
    print("\n".join(lines), end="")
    return summary_
