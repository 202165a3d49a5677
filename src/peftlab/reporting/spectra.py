"""Spectral diagnostics of trained adapters (``peftlab-report spectra=true``): the singular values
of every module's weight update ΔW, and how many directions the update really uses.

- effective rank: exp of the entropy of σ/Σσ (Roy and Vetterli, 2007); r equal singular values
  give r, one dominant direction gives about 1.
- stable rank: Σσ² / σ₁², the squared Frobenius norm in units of the largest direction.
- top-1 energy: σ₁² / Σσ², the share of the update's squared norm in its top direction.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.errors import ConfigError
from peftlab.reporting.adapters import ANALYSED, module_updates, read_config
from peftlab.reporting.escape import csv_text, md
from peftlab.reporting.runs import Group

if TYPE_CHECKING:  # torch loads when an analysis runs, not when reporting is imported
    import torch

SPECTRA_FILES = ("spectra.md", "spectra.csv")
SPECTRA_PLOT = "spectra.png"
_FIELDS = ("setting", "seed", "run", "module", "rank", "effective_rank", "stable_rank", "top1_energy")


def singular_values(delta: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.linalg.svdvals(delta.double())


def effective_rank(sv: torch.Tensor) -> float:
    import torch

    p = sv / sv.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum())) if len(p) else 0.0


def stable_rank(sv: torch.Tensor) -> float:
    return float((sv ** 2).sum() / sv[0] ** 2) if len(sv) and sv[0] > 0 else 0.0


def top1_energy(sv: torch.Tensor) -> float:
    total = float((sv ** 2).sum())
    return float(sv[0] ** 2) / total if total > 0 else 0.0


def spectra(groups: list[Group]) -> tuple[list[dict[str, Any]], dict[str, list[float]], list[str]]:
    """One row per (run, module), each group's mean normalised spectrum (σ_k / σ_1, averaged over
    its runs' modules, as long as the shortest spectrum), and the runs left out, with why."""
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[float]] = {}
    skipped: list[str] = []
    for g in groups:
        normalised = []
        for run in g.finished:
            why = not_analysed(run.path)
            if why:
                skipped.append(f"{run.path} ({why})")
                continue
            for u in module_updates(run.path):
                sv = singular_values(u.compact())[: u.rank if u.a is not None else None]
                rows.append({"setting": g.setting, "seed": run.seed, "run": str(run.path), "module": u.name,
                             "rank": u.rank, "effective_rank": effective_rank(sv), "stable_rank": stable_rank(sv),
                             "top1_energy": top1_energy(sv)})
                if sv[0] > 0:
                    normalised.append((sv / sv[0]).tolist())
        if normalised:
            length = min(len(s) for s in normalised)
            curves[g.setting] = [statistics.fmean(s[k] for s in normalised) for k in range(length)]
    if not rows:
        raise ConfigError("spectra: no finished run has a LoRA, LoHa or LoKr adapter to analyse"
                          + (f" (left out: {'; '.join(skipped)})" if skipped else ""))
    return rows, curves, skipped


def not_analysed(run_dir: Path) -> str:
    """Why a run's adapter is not analysed ("" when it is)."""
    if not (run_dir / "adapter" / "adapter_config.json").is_file():
        return "no adapter"
    kind = str(read_config(run_dir).get("peft_type", "?"))
    return "" if kind in ANALYSED else f"a {kind} adapter"


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per group: the adapter's rank and the mean (over runs and modules) of each diagnostic."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out.setdefault(r["setting"], {"setting": r["setting"], "rank": r["rank"], "runs": set(), "rows": []})
        out[r["setting"]]["runs"].add(r["run"])
        out[r["setting"]]["rows"].append(r)
    return [{"setting": s, "rank": v["rank"], "runs": len(v["runs"]), "modules": len(v["rows"]) // len(v["runs"]),
             **{k: statistics.fmean(r[k] for r in v["rows"]) for k in ("effective_rank", "stable_rank", "top1_energy")}}
            for s, v in out.items()]


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["", "## Spectra of the weight updates", "",
             "Singular values of each module's ΔW; effective rank = exp(entropy of σ/Σσ), stable rank = Σσ²/σ₁², "
             "top-1 energy = σ₁²/Σσ² (means over runs and modules; per module in spectra.csv).", "",
             "| setting | rank r | runs | modules | effective rank | stable rank | top-1 energy |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for s in summary(rows):
        lines.append(f"| {md(s['setting'])} | {s['rank']} | {s['runs']} | {s['modules']} | {s['effective_rank']:.2f} "
                     f"| {s['stable_rank']:.2f} | {s['top1_energy']:.3f} |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    return csv_text(list(_FIELDS), ([f"{v:.6g}" if isinstance(v, float) else v for v in map(r.get, _FIELDS)]
                                     for r in rows))


def plot(plt: Any, curves: dict[str, list[float]]):
    fig, ax = plt.subplots(figsize=(7, 4))
    for setting, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, marker="o" if len(curve) <= 16 else None, ms=3, label=setting)
    ax.set(xlabel="singular value index k", ylabel="σ_k / σ_1 (mean over modules and runs)",
           title="spectra of the weight updates", xscale="log" if max(map(len, curves.values())) > 16 else "linear")
    ax.legend(fontsize=7)
    return fig


@dataclass
class Analysis:
    """The spectra, computed before anything is written."""

    rows: list[dict[str, Any]]
    curves: dict[str, list[float]]
    skipped: list[str]

    def write(self, out_dir: Path, plots: bool) -> tuple[str, list[str]]:
        """spectra.md's text (also appended to results.md), and the files written."""
        from peftlab.runs.files import atomic_path

        md = to_markdown(self.rows)
        if self.skipped:
            md += f"\nLeft out: {'; '.join(self.skipped)}.\n"
        for name, text in zip(SPECTRA_FILES, (md, to_csv(self.rows)), strict=True):
            with atomic_path(out_dir / name, overwrite=True) as tmp:
                tmp.write_text(text)
        files = list(SPECTRA_FILES)
        if plots and self.curves:
            from peftlab.reporting.plots import figure_to

            figure_to(out_dir / SPECTRA_PLOT, lambda plt: plot(plt, self.curves))
            files.append(SPECTRA_PLOT)
        return md, files


def analyse(groups: list[Group]) -> Analysis:
    return Analysis(*spectra(groups))
