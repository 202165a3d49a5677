"""The report's plots: parameters against the metric (Pareto front), validation loss per group,
throughput and peak memory per group, and online RL's training curves where runs logged them."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any, Callable

from peftlab.errors import ConfigError
from peftlab.reporting.runs import Group, Run
from peftlab.runs.files import atomic_path

PLOT_FILES = ("params_vs_metric.png", "val_loss.png", "throughput_memory.png")
RL_PLOT = "rl_curves.png"  # online RL runs only: what each step measured, against the steps
RL_CURVES = {"train/reward": "reward (the batch's mean)", "train/kl": "KL to the reference (k3, per token)",
             "train/clip_fraction": "clip fraction", "train/completion_length": "completion length (tokens)"}


def _save(fig, path: Path) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def pareto_front(points: list[tuple[float, float]], greater_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats with fewer parameters and a better metric."""
    if not greater_is_better:
        points = [(x, -y) for x, y in points]
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def run_curves(run: Run, keys: tuple[str, ...] = ("train/loss", "val/loss")) -> dict[str, dict[int, float]]:
    """Each key's finite values by step, from the run's logs/metrics.csv (the CSV logger's file)."""
    path = run.path / "logs" / "metrics.csv"
    out: dict[str, dict[int, float]] = {k: {} for k in keys}
    if not path.exists():
        return out
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for key, points in out.items():
                    try:
                        step, value = int(row["step"]), float(row[key])
                    except (KeyError, TypeError, ValueError):
                        continue
                    if math.isfinite(value):
                        points[step] = value
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{path}: not readable ({type(err).__name__}: {err})") from None
    return out


def val_curves(run: Run) -> dict[int, float]:
    return run_curves(run, ("val/loss",))["val/loss"]


def figure_to(path: Path, draw: Callable[[Any], Any]) -> None:
    """``draw(pyplot)`` returns a figure, which is laid out, written to ``path`` whole, and closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot(groups: list[Group], rows: list[dict[str, Any]], metric: str, out: Path,
         greater_is_better: bool = True) -> list[str]:
    """The report's figures, written into ``out``; returns their file names."""
    draw_params, draw_loss, draw_speed = PLOT_FILES
    figures = {draw_params: lambda plt: _params_vs_metric(plt, groups, rows, metric, greater_is_better),
               draw_loss: lambda plt: _val_loss(plt, groups),
               draw_speed: lambda plt: _throughput_memory(plt, rows)}
    if any(run_curves(r, ("train/reward",))["train/reward"] for g in groups for r in g.finished):
        figures[RL_PLOT] = lambda plt: _rl_curves(plt, groups)
    for name, draw in figures.items():
        figure_to(out / name, draw)
    return list(figures)


def _params_vs_metric(plt, groups, rows, metric: str, greater_is_better: bool):
    """Trainable parameters (log) against the test metric, the Pareto front marked."""
    ok = [(g, r) for g, r in zip(groups, rows, strict=True) if r[f"{metric}_mean"] is not None and r["trainable"]]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    pts = [(r["trainable"], r[f"{metric}_mean"]) for _, r in ok]
    for (g, r), (x, y) in zip(ok, pts, strict=True):
        ax.errorbar(x, y, yerr=r[f"{metric}_std"] or 0, fmt="o", capsize=3)
        ax.annotate(g.setting, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7)
    front = pareto_front(pts, greater_is_better)
    if front:
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="gray", label="Pareto front")
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (log scale)", ylabel=f"test {metric}",
           title=f"{metric} vs. trainable parameters")
    return fig


def _mean_curves(ax, groups, key: str) -> None:
    """Each group's ``key`` against the steps, the mean over its seeds (the steps every seed logged)."""
    for g in groups:
        curves = [c for c in (run_curves(r, (key,))[key] for r in g.finished) if c]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        ax.plot(steps, [statistics.fmean(c[s] for c in curves) for s in steps], marker="o", label=g.setting)


def _val_loss(plt, groups):
    """Validation loss curves, the mean over seeds."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    _mean_curves(ax, groups, "val/loss")
    ax.set(xlabel="step", ylabel="validation loss", title="validation loss (mean over seeds)")
    if ax.lines:
        ax.legend(fontsize=7)
    return fig


def _rl_curves(plt, groups):
    """Online RL: the reward, the KL to the reference, the clip fraction and the completion length
    against the steps, each group's mean over its seeds."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (key, title) in zip(axes.flat, RL_CURVES.items(), strict=True):
        _mean_curves(ax, groups, key)
        ax.set(xlabel="step", title=f"{title} (mean over seeds)")
    if axes.flat[0].lines:
        axes.flat[0].legend(fontsize=7)
    return fig


def _throughput_memory(plt, rows):
    """Throughput and peak memory per group."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.5))
    names = [r["setting"] for r in rows]
    a1.barh(names, [r["tokens_per_s_mean"] or 0 for r in rows])
    a1.set(xlabel="training tokens / s", title="throughput")
    a2.barh(names, [r["peak_rss_mb_mean"] or 0 for r in rows])
    a2.set(xlabel="peak RSS (MiB)", title="peak memory")
    for a in (a1, a2):
        a.tick_params(axis="y", labelsize=7)
    return fig


def claim_figure(results: list[Any], path: Path) -> None:
    """A claim's figure (reporting/claim_page.py), one panel per part with points: each family's
    groups at matched gain (gain against the metric, the front joined), the runs of a correlation
    with their least-squares line, or each search's mean validation score against its setting."""
    shown = [r for r in results if r.points]

    def draw(plt):
        fig, axes = plt.subplots(1, len(shown), figsize=(6.5 * len(shown), 4.8), squeeze=False)
        for ax, r in zip(axes[0], shown, strict=True):
            p, ratio = r.part, r.part["kind"] == "ratio"
            for name, points in r.points.items():
                pts = sorted((q for q in points if q["x"] is not None and q["y"] is not None), key=lambda q: q["x"])
                ax.scatter([q["x"] for q in pts], [q["y"] for q in pts], s=25, label=name)
                joined = pts if ratio else [q for q in pts if q.get("front")]
                if len(joined) > 1:
                    ax.plot([q["x"] for q in joined], [q["y"] for q in joined], "--", color=ax.collections[-1]
                            .get_facecolor()[0])
                for q in pts:
                    if q.get("chosen"):
                        ax.scatter([q["x"]], [q["y"]], marker="*", s=160, color="black")
            if p["kind"] == "correlated" and len({q["x"] for q in r.points["runs"]}) > 1:
                import numpy as np

                xs, ys = [q["x"] for q in r.points["runs"]], [q["y"] for q in r.points["runs"]]
                slope, icept = np.polyfit(xs, ys, 1)
                ax.plot(sorted(xs), [slope * x + icept for x in sorted(xs)], color="gray", label="least squares")
            x_label = p.get("against") or (p["matched"]["by"] if p.get("matched") else p["metric"])
            ax.set(xlabel=x_label, ylabel="validation score (search mean)" if ratio else str(p["metric"]),
                   title=f"{r.where}: {p['kind']}, {r.verdict}")
            if ratio:
                ax.set_xscale("log")
            ax.legend(fontsize=7)
        return fig

    figure_to(path, draw)
