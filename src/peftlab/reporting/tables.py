"""The report's tables: one row per group, as markdown, CSV and LaTeX."""

from __future__ import annotations

from typing import Any, Optional

from peftlab.reporting.escape import csv_text, md, tex
from peftlab.reporting.intervals import crossed_interval, two_stage_interval
from peftlab.reporting.runs import Group
from peftlab.runs.metrics import metric_at


def _fmt(s: dict[str, Any], digits: int = 4) -> str:
    if s["mean"] is None:
        return "—"
    if s["n"] > 1:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"


def table_rows(groups: list[Group], metric: str, tables: Optional[dict[str, Any]] = None,
               budgets: Optional[dict[str, dict[str, Any]]] = None) -> list[dict[str, Any]]:
    """One row per group. ``tables``: each group's seeds x items table (reporting/items.py), for the
    interval over seeds and items; ``budgets``: the seed-budget groups by job folder
    (reporting/seed_budget.py), whose interval over seeds is the two-stage one."""
    rows = []
    for g in groups:
        m, zs, forgot = g.stat(f"test.{metric}"), g.stat(f"zero_shot.{metric}"), g.stat("forgetting.delta")
        kl = g.stat("kl_to_base.kl")
        seeds_ci, rule = _seeds_interval(g, f"test.{metric}", m, budgets or {})
        table = (tables or {}).get(g.setting)
        items = crossed_interval(table.rows) if table is not None else None
        rows.append({
            "setting": g.setting, "method": g.label, "status": g.status, "n": m["n"],
            "trainable": g.stat("params.trainable")["mean"], "trainable_pct": g.stat("params.trainable_pct")["mean"],
            f"{metric}_mean": m["mean"], f"{metric}_std": m["std"], f"{metric}_ci95": seeds_ci,
            f"{metric}_ci95_rule": rule,
            # the interval counting the test items as a sample too (None: the runs' answers are not per item)
            f"{metric}_ci95_items": None if items is None else items.half,
            f"zero_shot_{metric}_mean": zs["mean"], f"val_{metric}_mean": g.stat(f"val.{metric}")["mean"],
            "test_loss_mean": g.stat("test.loss")["mean"],
            "train_wall_s_mean": g.stat("train.wall_s")["mean"],
            "tokens_per_s_mean": g.stat("train.tokens_per_s")["mean"],
            "peak_rss_mb_mean": g.stat("memory.peak_rss_mb")["mean"],
            "adapter_mb_mean": g.stat("adapter_mb")["mean"],
            # the change in loss on general text (metrics.json forgetting.delta; language models)
            "forgetting_mean": forgot["mean"], "forgetting_ci95": forgot["ci95"],
            # how far training moved the model on the task's prompts (metrics.json kl_to_base.kl, nats)
            "kl_to_base_mean": kl["mean"], "kl_to_base_ci95": kl["ci95"],
            "_metric": m, "_zero_shot": zs, "_forgetting": forgot, "_kl": kl, "_val": g.stat(f"val.{metric}"),
        })
    return rows


def _seeds_interval(group: Group, key: str, found: dict[str, Any],
                    budgets: dict[str, dict[str, Any]]) -> tuple[Optional[float], str]:
    """The half-width over seeds and its rule: Stein's two-stage interval for a group the seed budget
    ran (every run of it in one budget group), Student t otherwise."""
    recorded = [budgets.get(str(r.path.resolve())) for r in group.finished]
    one = bool(recorded) and all(recorded) and len({b["group"] for b in recorded}) == 1
    if one and recorded[0]["metric"] == key and found["n"]:  # the budget's own metric, one group of one sweep
        values = [v for r in group.finished if (v := metric_at(r.metrics, key)) is not None]
        return two_stage_interval(values, recorded[0]["pilot_sd"], recorded[0]["pilot_seeds"]).half, "two-stage"
    return found["ci95"], "t"


def to_markdown(rows: list[dict[str, Any]], metric: str) -> str:
    """The group table; with a ``letters`` column when the report compared the groups (groups that
    share a letter are not separated)."""
    cld = bool(rows) and "letters" in rows[0]
    shown = md(metric)
    head = (f"| setting | trainable params | trainable % | adapter MiB | zero-shot {shown} | val {shown} "
            f"| test {shown} (mean ± std) | 95% CI (seeds) | 95% CI (seeds + items) | n |"
            f"{' letters |' if cld else ''} forgetting (Δ loss, mean ± std) | KL to base (nats, mean ± std) "
            "| train s | tokens/s | peak RSS MiB | status |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + (":---:|" if cld else "")
             + "---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ci = _half(r[f"{metric}_ci95"]) + (" (two-stage)" if r[f"{metric}_ci95_rule"] == "two-stage" else "")
        letters = f" {md(r['letters'] or '—')} |" if cld else ""
        lines.append(
            f"| {md(r['setting'])} | {_num(r['trainable'], 0)} | {_num(r['trainable_pct'], 3)} "
            f"| {_num(r['adapter_mb_mean'], 2)} | {_fmt(r['_zero_shot'])} | {_fmt(r['_val'])} "
            f"| {_fmt(r['_metric'])} | {ci} | {_half(r[f'{metric}_ci95_items'])} | {r['n']} |{letters} "
            f"{_fmt(r['_forgetting'], 3)} | {_fmt(r['_kl'], 4)} "
            f"| {_num(r['train_wall_s_mean'], 1)} | {_num(r['tokens_per_s_mean'], 0)} "
            f"| {_num(r['peak_rss_mb_mean'], 0)} | {md(r['status'])} |")
    notes = ("\n95% CI (seeds): Student t over the seeds, the test items fixed (two-stage: the seed budget's "
             "interval from its pilot's spread). 95% CI (seeds + items): the test items counted as a sample too "
             "(crossed mean squares; — where the runs' answers are not scored item by item). KL to base: "
             "KL(base || trained) on the task's own prompts, per answer sampled from the base (RL's Razor's "
             "measure).\n")
    return "\n".join(lines) + "\n" + notes


def _half(value: Optional[float]) -> str:
    return "—" if value is None else f"± {value:.4f}"


def _num(v: Optional[float], digits: int) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def to_csv(rows: list[dict[str, Any]]) -> str:
    keys = [k for k in rows[0] if not k.startswith("_")]
    return csv_text(keys, ([r[k] for k in keys] for r in rows))


def to_latex(rows: list[dict[str, Any]], metric: str) -> str:
    lines = [r"\begin{tabular}{lrrl}", r"\toprule",
             f"Setting & Trainable params & Trainable \\% & Test {tex(metric)} \\\\", r"\midrule"]
    for r in rows:
        m = r["_metric"]
        value = "--" if m["mean"] is None else (f"${m['mean']:.3f} \\pm {m['std']:.3f}$" if m["n"] > 1
                                                 else f"${m['mean']:.3f}$")
        if r.get("letters"):  # the compact letter display: groups sharing a letter are not separated
            value += f"\\textsuperscript{{{tex(r['letters'])}}}"
        if r["status"] != "ok":
            value += f" ({tex(r['status'])})"
        lines.append(f"{tex(r['setting'])} & {_num(r['trainable'], 0)} & {_num(r['trainable_pct'], 3)} & {value} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
