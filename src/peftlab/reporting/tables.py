"""The report's tables: one row per group, as markdown, CSV and LaTeX."""

from __future__ import annotations

import csv
import io
from typing import Any, Optional

from peftlab.reporting.runs import Group


def _fmt(s: dict[str, Any], digits: int = 4) -> str:
    if s["mean"] is None:
        return "—"
    if s["n"] > 1:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"


def table_rows(groups: list[Group], metric: str) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        m, zs, forgot = g.stat(f"test.{metric}"), g.stat(f"zero_shot.{metric}"), g.stat("forgetting.delta")
        rows.append({
            "setting": g.setting, "method": g.label, "status": g.status, "n": m["n"],
            "trainable": g.stat("params.trainable")["mean"], "trainable_pct": g.stat("params.trainable_pct")["mean"],
            f"{metric}_mean": m["mean"], f"{metric}_std": m["std"], f"{metric}_ci95": m["ci95"],
            f"zero_shot_{metric}_mean": zs["mean"], "test_loss_mean": g.stat("test.loss")["mean"],
            "train_wall_s_mean": g.stat("train.wall_s")["mean"],
            "tokens_per_s_mean": g.stat("train.tokens_per_s")["mean"],
            "peak_rss_mb_mean": g.stat("memory.peak_rss_mb")["mean"],
            "adapter_mb_mean": g.stat("adapter_mb")["mean"],
            # the change in loss on general text (metrics.json forgetting.delta; language models)
            "forgetting_mean": forgot["mean"], "forgetting_ci95": forgot["ci95"],
            "_metric": m, "_zero_shot": zs, "_forgetting": forgot,
        })
    return rows


def to_markdown(rows: list[dict[str, Any]], metric: str) -> str:
    """The group table; with a ``letters`` column when the report compared the groups (groups that
    share a letter are not separated)."""
    cld = bool(rows) and "letters" in rows[0]
    head = (f"| setting | trainable params | trainable % | adapter MiB | zero-shot {metric} "
            f"| test {metric} (mean ± std) | 95% CI | n |{' letters |' if cld else ''} "
            "forgetting (Δ loss, mean ± std) | train s | tokens/s | peak RSS MiB | status |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|" + (":---:|" if cld else "")
             + "---:|---:|---:|---:|---|"]
    for r in rows:
        ci = f"± {r[f'{metric}_ci95']:.4f}" if r[f"{metric}_ci95"] is not None else "—"
        letters = f" {r['letters'] or '—'} |" if cld else ""
        lines.append(
            f"| {r['setting']} | {_num(r['trainable'], 0)} | {_num(r['trainable_pct'], 3)} "
            f"| {_num(r['adapter_mb_mean'], 2)} | {_fmt(r['_zero_shot'])} "
            f"| {_fmt(r['_metric'])} | {ci} | {r['n']} |{letters} "
            f"{_fmt(r['_forgetting'], 3)} "
            f"| {_num(r['train_wall_s_mean'], 1)} | {_num(r['tokens_per_s_mean'], 0)} "
            f"| {_num(r['peak_rss_mb_mean'], 0)} | {r['status']} |")
    return "\n".join(lines) + "\n"


def _num(v: Optional[float], digits: int) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def to_csv(rows: list[dict[str, Any]]) -> str:
    keys = [k for k in rows[0] if not k.startswith("_")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in keys})
    return buf.getvalue()


def to_latex(rows: list[dict[str, Any]], metric: str) -> str:
    def esc(text: str) -> str:
        return "".join("\\" + c if c in "&%$#_{}" else c for c in text)

    lines = [r"\begin{tabular}{lrrl}", r"\toprule",
             f"Setting & Trainable params & Trainable \\% & Test {esc(metric)} \\\\", r"\midrule"]
    for r in rows:
        m = r["_metric"]
        value = "--" if m["mean"] is None else (f"${m['mean']:.3f} \\pm {m['std']:.3f}$" if m["n"] > 1
                                                 else f"${m['mean']:.3f}$")
        if r.get("letters"):  # the compact letter display: groups sharing a letter are not separated
            value += f"\\textsuperscript{{{r['letters']}}}"
        if r["status"] != "ok":
            value += f" ({esc(r['status'])})"
        lines.append(f"{esc(r['setting'])} & {_num(r['trainable'], 0)} & {_num(r['trainable_pct'], 3)} & {value} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
