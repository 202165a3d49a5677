"""``peftlab-report``: turn a sweep (or any run folders) into the tables and plots of a paper.

    peftlab-report outputs/multiruns/<stamp>
    peftlab-report outputs/runs/a outputs/runs/b out_dir=reports/ablation

Every run folder under the inputs is read (``metrics.json``, ``.hydra/overrides.yaml``,
``logs/metrics.csv``). Runs are grouped by their overrides other than the seed and aggregated over
seeds: mean, standard deviation, n and a 95% confidence interval (Student t). A run without a
``metrics.json`` (failed, or still running) is listed as such, never dropped. Writes
``results.md``, ``results.csv``, ``results.tex`` and PNG plots into ``out_dir``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from peftlab.cli import run_app
from peftlab.config import CONF_DIR, validate
from peftlab.config.schema import ReportSchema
from peftlab.errors import ConfigError
from peftlab.outputs import metric_at, write_json

log = logging.getLogger("peftlab.report")

# two-sided 95% Student t quantiles by degrees of freedom (1.96 beyond the table)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}
# overrides that say where or how a run ran, not what it is
_NOT_A_SETTING = ("seed=", "hydra.", "trainer.enable_progress_bar=", "paths.", "zero_shot=", "merge_after=",
                  "save_adapter=", "hardware.threads=")
PRIMARY_METRICS = ("exact_match", "accuracy", "macro_f1")


def t95(df: int) -> float:
    if df <= 0:
        return float("nan")
    keys = [k for k in sorted(_T95) if k >= df]
    return _T95[keys[0]] if keys else 1.96


@dataclass
class Run:
    path: Path
    overrides: list[str]
    metrics: Optional[dict[str, Any]]
    status: str  # finished | failed | unfinished
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
    overrides_file = folder / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) or [] if overrides_file.exists() else []
    metrics_file = folder / "metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        return Run(folder, overrides or metrics.get("overrides", []), metrics, "finished")
    failed = folder / "failed.json"
    if failed.exists():
        record = json.loads(failed.read_text())
        return Run(folder, overrides or record.get("overrides", []), None, "failed", record.get("error"))
    return Run(folder, overrides, None, "unfinished")


def stats(values: list[float]) -> dict[str, Any]:
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "ci95": None}
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    half = t95(n - 1) * std / math.sqrt(n) if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "ci95": half}


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


def primary_metric(runs: list[Run]) -> str:
    for key in PRIMARY_METRICS:
        if any(metric_at(r.metrics, f"test.{key}") is not None for r in runs):
            return key
    return "loss"


def _fmt(s: dict[str, Any], digits: int = 4) -> str:
    if s["mean"] is None:
        return "—"
    if s["n"] > 1:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"


def table_rows(groups: list[Group], metric: str) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        m, zs = g.stat(f"test.{metric}"), g.stat(f"zero_shot.{metric}")
        rows.append({
            "setting": g.setting, "method": g.label, "status": g.status, "n": m["n"],
            "trainable": g.stat("params.trainable")["mean"], "trainable_pct": g.stat("params.trainable_pct")["mean"],
            f"{metric}_mean": m["mean"], f"{metric}_std": m["std"], f"{metric}_ci95": m["ci95"],
            f"zero_shot_{metric}_mean": zs["mean"], "test_loss_mean": g.stat("test.loss")["mean"],
            "train_wall_s_mean": g.stat("train.wall_s")["mean"], "tokens_per_s_mean": g.stat("train.tokens_per_s")["mean"],
            "peak_rss_mb_mean": g.stat("memory.peak_rss_mb")["mean"],
            "_metric": m, "_zero_shot": zs,
        })
    return rows


def to_markdown(rows: list[dict[str, Any]], metric: str) -> str:
    head = (f"| setting | trainable params | trainable % | zero-shot {metric} | test {metric} (mean ± std) | 95% CI "
            "| n | train s | tokens/s | peak RSS MiB | status |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ci = f"± {r[f'{metric}_ci95']:.4f}" if r[f"{metric}_ci95"] is not None else "—"
        lines.append(
            f"| {r['setting']} | {_num(r['trainable'], 0)} | {_num(r['trainable_pct'], 3)} | {_fmt(r['_zero_shot'])} "
            f"| {_fmt(r['_metric'])} | {ci} | {r['n']} | {_num(r['train_wall_s_mean'], 1)} "
            f"| {_num(r['tokens_per_s_mean'], 0)} | {_num(r['peak_rss_mb_mean'], 0)} | {r['status']} |")
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
        if r["status"] != "ok":
            value += f" ({esc(r['status'])})"
        lines.append(f"{esc(r['setting'])} & {_num(r['trainable'], 0)} & {_num(r['trainable_pct'], 3)} & {value} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats with fewer parameters and a higher metric."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def val_curves(run: Run) -> dict[int, float]:
    path = run.path / "logs" / "metrics.csv"
    if not path.exists():
        return {}
    curve = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get("val/loss"):
                curve[int(row["step"])] = float(row["val/loss"])
    return curve


def plot(groups: list[Group], rows: list[dict[str, Any]], metric: str, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ok = [(g, r) for g, r in zip(groups, rows) if r[f"{metric}_mean"] is not None and r["trainable"]]
    # 1. trainable parameters (log) against the test metric, Pareto front marked
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    pts = [(r["trainable"], r[f"{metric}_mean"]) for _, r in ok]
    for (g, r), (x, y) in zip(ok, pts):
        ax.errorbar(x, y, yerr=r[f"{metric}_std"] or 0, fmt="o", capsize=3)
        ax.annotate(g.setting, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7)
    front = pareto_front(pts)
    if front:
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="gray", label="Pareto front")
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (log scale)", ylabel=f"test {metric}", title=f"{metric} vs. trainable parameters")
    fig.tight_layout()
    fig.savefig(out / "params_vs_metric.png", dpi=120)
    written.append("params_vs_metric.png")
    plt.close(fig)
    # 2. validation loss curves, mean over seeds
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for g in groups:
        curves = [c for c in (val_curves(r) for r in g.finished) if c]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        ax.plot(steps, [statistics.fmean(c[s] for c in curves) for s in steps], marker="o", label=g.setting)
    ax.set(xlabel="step", ylabel="validation loss", title="validation loss (mean over seeds)")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "val_loss.png", dpi=120)
    written.append("val_loss.png")
    plt.close(fig)
    # 3. throughput and peak memory per group
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.5))
    names = [r["setting"] for r in rows]
    a1.barh(names, [r["tokens_per_s_mean"] or 0 for r in rows])
    a1.set(xlabel="training tokens / s", title="throughput")
    a2.barh(names, [r["peak_rss_mb_mean"] or 0 for r in rows])
    a2.set(xlabel="peak RSS (MiB)", title="peak memory")
    for a in (a1, a2):
        a.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(out / "throughput_memory.png", dpi=120)
    written.append("throughput_memory.png")
    plt.close(fig)
    return written


def report(inputs: list[Path], out_dir: Path, plots: bool = True) -> dict[str, Any]:
    runs = find_runs(inputs)
    groups = group_runs(runs)
    metric = primary_metric(runs)
    rows = table_rows(groups, metric)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = to_markdown(rows, metric)
    (out_dir / "results.md").write_text(md)
    (out_dir / "results.csv").write_text(to_csv(rows))
    (out_dir / "results.tex").write_text(to_latex(rows, metric))
    files = ["results.md", "results.csv", "results.tex"] + (plot(groups, rows, metric, out_dir) if plots else [])
    summary = {"inputs": [str(p) for p in inputs], "metric": metric, "runs": len(runs),
               "finished": sum(r.status == "finished" for r in runs),
               "not_finished": [{"run": str(r.path), "status": r.status, "error": r.error}
                                for r in runs if r.status != "finished"],
               "groups": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], "files": files}
    write_json(out_dir / "report.json", summary)
    print(md, end="")
    log.info("%d runs in %d groups -> %s", len(runs), len(groups), out_dir)
    return summary


def report_cfg(cfg: DictConfig) -> dict[str, Any]:
    conf = validate(cfg, ReportSchema)
    if not conf.inputs:
        raise ConfigError("inputs: name at least one sweep or run folder (peftlab-report outputs/multiruns/<stamp>)")
    inputs = [Path(p) for p in conf.inputs]
    if conf.out_dir:
        out = Path(conf.out_dir)
    elif len(inputs) == 1:
        out = inputs[0] / "report"
    else:
        out = Path(HydraConfig.get().runtime.output_dir)
    return report(inputs, out, conf.plots)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="report")
def _hydra_main(cfg: DictConfig) -> None:
    report_cfg(cfg)


def positional_to_inputs(argv: list[str]) -> list[str]:
    """``peftlab-report a b k=v`` -> ``peftlab-report inputs=[a,b] k=v``: folders may be given bare."""
    bare = [a for a in argv if "=" not in a and not a.startswith("-")]
    rest = [a for a in argv if a not in bare]
    if not bare:
        return argv
    quoted = ",".join("'" + a.replace("'", "\\'") + "'" for a in bare)
    return [f"inputs=[{quoted}]", *rest]


def main() -> None:
    sys.argv[1:] = positional_to_inputs(sys.argv[1:])
    run_app(_hydra_main, "peftlab-report")


if __name__ == "__main__":
    main()
