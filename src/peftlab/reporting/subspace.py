"""The LoRA paper's subspace analysis (Hu et al., 2021, section 7.2) on saved adapters
(``peftlab-report subspace=[8,64]``).

For two adapters X and Y of the same modules, per module: U_X, U_Y are the right-singular vectors of
the factor A (r × k: the input directions the adapter reads), best first; the normalised subspace
similarity of their top i and top j directions is

    φ(i, j) = ‖U_X[:i] U_Y[:j]ᵀ‖²_F / min(i, j)   in [0, 1]

(1: one subspace contains the other; for random subspaces of R^k its expectation is max(i, j)/k).
The same is computed for the right-singular vectors of the update ΔW = s·B·A. Compared: the low and
the high rank at the same seed, and two seeds of the same rank.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.errors import ConfigError
from peftlab.reporting.adapters import module_updates, read_config
from peftlab.reporting.escape import csv_text, md
from peftlab.reporting.runs import Run

if TYPE_CHECKING:  # torch loads when an analysis runs, not when reporting is imported
    import torch

SUBSPACE_FILES = ("subspace.md", "subspace.csv")
SUBSPACE_PLOT = "subspace.png"
# A: the input directions the adapter reads (its factor A, random at the start of training); ΔW: the
# update's input directions; ΔW out: the update's output directions (from B, zero at the start)
WEIGHTS = ("A", "ΔW", "ΔW out")


def directions(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The top ``rank`` right-singular vectors (rows), best first."""
    import torch

    return torch.linalg.svd(matrix.double(), full_matrices=False).Vh[:rank]


def similarity(ux: torch.Tensor, uy: torch.Tensor) -> torch.Tensor:
    """φ(i, j) for i = 1..len(ux), j = 1..len(uy) (row i-1, column j-1)."""
    import torch

    squared = (ux @ uy.T) ** 2
    both = squared.cumsum(0).cumsum(1)
    i = torch.arange(1, len(ux) + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, len(uy) + 1, dtype=torch.float64)[None, :]
    return both / torch.minimum(i, j)


@dataclass
class Comparison:
    """One kind of pair (``r=8 vs r=64, same seed``), one weight (A or ΔW): φ per module and pair."""

    label: str
    ranks: tuple[int, int]  # the two adapters' ranks
    weight: str
    phis: list[tuple[str, str, str, torch.Tensor]]  # (module, run x, run y, φ)
    sizes: dict[str, int]  # module -> k, the size of the space its directions live in

    def modules(self, kind: str = "") -> list[tuple[str, str, str, torch.Tensor]]:
        """The φ of every module, or of the modules named ``kind`` (q_proj, v_proj, ...)."""
        return [p for p in self.phis if not kind or p[0].rsplit(".", 1)[-1] == kind]

    def kinds(self) -> list[str]:
        return sorted({m.rsplit(".", 1)[-1] for m, _, _, _ in self.phis})

    def mean(self, kind: str = "") -> torch.Tensor:
        import torch

        return torch.stack([p for _, _, _, p in self.modules(kind)]).mean(0)

    def chance(self, i: int, j: int, kind: str = "") -> float:
        """φ(i, j) expected of random subspaces, averaged over the same modules."""
        return statistics.fmean(max(i, j) / self.sizes[m] for m, _, _, _ in self.modules(kind))


def lora_runs(runs: list[Run]) -> dict[tuple[int, Any], Run]:
    """Finished LoRA runs by (rank, seed); two runs of the same rank and seed are ambiguous."""
    found: dict[tuple[int, Any], Run] = {}
    for run in runs:
        if run.status != "finished" or not (run.path / "adapter" / "adapter_config.json").is_file():
            continue
        config = read_config(run.path)
        if config.get("peft_type") != "LORA":
            continue
        rank = config.get("r")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ConfigError(f"{run.path / 'adapter' / 'adapter_config.json'}: r must be a whole number > 0, "
                              f"got {rank!r}")
        key = (rank, run.seed)
        if key in found:
            raise ConfigError(f"subspace: two LoRA runs with r={key[0]} and seed {key[1]} ({found[key].path}, "
                              f"{run.path}); report one setting at a time")
        found[key] = run
    return found


def _pairs(by_key: dict[tuple[int, Any], Run], low: int, high: int) -> dict[tuple[str, tuple[int, int]], list]:
    """(label, ranks) -> the pairs of runs: the two ranks at each seed both ran, and two seeds of each rank."""
    ranks = sorted({r for r, _ in by_key})
    for r in (low, high):
        if r not in ranks:
            raise ConfigError(f"subspace: no finished LoRA run with r={r} among the inputs (ranks found: "
                              f"{', '.join(map(str, ranks)) or 'none'})")
    seeds = {r: sorted((s for rank, s in by_key if rank == r), key=str) for r in (low, high)}
    pairs = {(f"r={low} vs r={high}, same seed", (low, high)): [(by_key[low, s], by_key[high, s])
                                                                for s in seeds[low] if s in seeds[high]]}
    for r in (high, low):
        pairs[f"r={r}, seed vs seed", (r, r)] = [(by_key[r, a], by_key[r, b])
                                                 for a, b in itertools.combinations(seeds[r], 2)]
    if not any(pairs.values()):
        shown = "; ".join(f"r={r}: seeds {', '.join(map(str, seeds[r]))}" for r in (low, high))
        raise ConfigError(f"subspace: nothing to compare (no seed ran both ranks and no rank ran two seeds): {shown}")
    return pairs


def _bases(run: Run) -> dict[str, dict[str, torch.Tensor]]:
    """module -> {weight: its top directions (rows)} for each of WEIGHTS."""
    return {u.name: {"A": directions(u.a, u.rank), "ΔW": directions(u.compact(), u.rank),
                     "ΔW out": u.output_directions()} for u in module_updates(run.path)}


def compare(runs: list[Run], low: int, high: int) -> list[Comparison]:
    """φ for the two ranks at the same seed, and for two seeds of each rank; never empty."""
    cache: dict[Path, dict[str, dict[str, Any]]] = {}
    out = []
    for (label, pair_ranks), runs_xy in _pairs(lora_runs(runs), low, high).items():
        by_weight: dict[str, list] = {w: [] for w in WEIGHTS}
        sizes: dict[str, dict[str, int]] = {w: {} for w in WEIGHTS}  # the space the directions live in
        for x, y in runs_xy:
            bx = cache[x.path] if x.path in cache else cache.setdefault(x.path, _bases(x))
            by = cache[y.path] if y.path in cache else cache.setdefault(y.path, _bases(y))
            for name in sorted(bx.keys() & by.keys()):
                for w in WEIGHTS:
                    sizes[w][name] = int(bx[name][w].shape[1])
                    by_weight[w].append((name, str(x.path), str(y.path), similarity(bx[name][w], by[name][w])))
        out += [Comparison(label, pair_ranks, w, phis, sizes[w]) for w, phis in by_weight.items() if phis]
    if not out:
        raise ConfigError(f"subspace: the r={low} and r={high} adapters share no module")
    return out


def _at(phi: torch.Tensor, i: int, j: int) -> float:
    return float(phi[i - 1, j - 1])


def columns(c: Comparison, low: int) -> list[tuple[str, int, int]]:
    """(label, i, j). Across ranks: φ(1,1), φ(1,r_y), φ(r_x,r_x), φ(r_x,r_y); across seeds of rank r:
    φ(1,1), φ(low,low), φ(r,r). A column whose label repeats another's is left out."""
    rx, ry = c.ranks
    if rx != ry:
        wanted = [(f"φ({i},{j})", i, j) for i, j in ((1, 1), (1, ry), (rx, rx), (rx, ry))]
    else:
        wanted = [("φ(1,1)", 1, 1), (f"φ({low},{low})", min(low, rx), min(low, rx)), ("φ(r,r)", rx, ry)]
    out: list[tuple[str, int, int]] = []
    for label, i, j in wanted:  # by label, so that every row of a table has the same columns
        if label not in [o[0] for o in out]:
            out.append((label, i, j))
    return out


def to_markdown(comparisons: list[Comparison], low: int, high: int) -> str:
    lines = ["", f"## Subspace similarity (r={low} and r={high})", "",
             "φ(i, j) = ‖U_Xᵢᵀ U_Yⱼ‖²_F / min(i, j) between the top i and top j right-singular directions of two "
             "adapters' A (or of their updates ΔW), per module, then the mean over modules and pairs of runs; "
             "random subspaces give max(i, j)/k (per module and pair in subspace.csv).", ""]
    for across in ("ranks", "seeds"):
        chosen = [c for c in comparisons if (c.ranks[0] != c.ranks[1]) == (across == "ranks")]
        if not chosen:
            continue
        head = [label for label, _, _ in columns(chosen[0], low)]
        lines += [f"Across {across}:", "", f"| pair | weight | modules | modules × pairs | {' | '.join(head)} |",
                  "|---|---|---|---:|" + "---:|" * len(head)]
        for kind in chosen[0].kinds() + ([""] if len(chosen[0].kinds()) > 1 else []):
            name = kind or "all"
            for c in chosen:
                phi = c.mean(kind)
                lines.append(f"| {md(c.label)} | {c.weight} | {md(name)} | {len(c.modules(kind))} | "
                             + " | ".join(f"{_at(phi, i, j):.3f}" for _, i, j in columns(c, low)) + " |")
            for c in {(c.ranks, c.weight == "ΔW out"): c for c in chosen}.values():  # chance: per ranks and space
                what = ("" if across == "ranks" else f", r={c.ranks[0]}") + (", outputs" if c.weight == "ΔW out"
                                                                             else ", inputs")
                lines.append(f"| random subspaces{what} (expected) | | {md(name)} | | "
                             + " | ".join(f"{c.chance(i, j, kind):.3f}" for _, i, j in columns(c, low)) + " |")
        lines.append("")
    return "\n".join(lines)


def to_csv(comparisons: list[Comparison], low: int) -> str:
    rows = []
    for c in comparisons:
        rx, ry = c.ranks
        lo = min(low, rx, ry)
        for module, x, y, phi in c.phis:
            rows.append([c.label, c.weight, module, x, y, rx, ry,
                         *(f"{_at(phi, i, j):.6f}" for i, j in ((1, 1), (1, ry), (lo, lo), (rx, ry)))])
    return csv_text(["pair", "weight", "module", "run_x", "run_y", "rank_x", "rank_y", "phi_1_1", "phi_1_rank_y",
                     "phi_low_low", "phi_rank_x_rank_y"], rows)


def plot(plt: Any, comparisons: list[Comparison]):
    """Heat maps of the mean φ(i, j), as the paper's figures 3 and 4: one per pair kind and weight."""
    labels = list(dict.fromkeys(c.label for c in comparisons))
    fig, axes = plt.subplots(len(WEIGHTS), len(labels), figsize=(4.2 * len(labels), 3.2 * len(WEIGHTS)),
                             squeeze=False)
    for c in comparisons:
        ax = axes[WEIGHTS.index(c.weight)][labels.index(c.label)]
        phi = c.mean().numpy()
        image = ax.imshow(phi, aspect="auto", origin="upper", vmin=0, vmax=1, cmap="viridis",
                          extent=(0.5, phi.shape[1] + 0.5, phi.shape[0] + 0.5, 0.5))
        ax.set(title=f"{c.weight}: {c.label}", xlabel="j", ylabel="i")
        ax.title.set_fontsize(8)
        fig.colorbar(image, ax=ax, fraction=0.046)
    return fig


@dataclass
class Analysis:
    """The subspace analysis, computed before anything is written."""

    comparisons: list[Comparison]
    low: int
    high: int

    def write(self, out_dir: Path, plots: bool) -> tuple[str, list[str]]:
        from peftlab.runs.files import atomic_path

        md = to_markdown(self.comparisons, self.low, self.high)
        for name, text in zip(SUBSPACE_FILES, (md, to_csv(self.comparisons, self.low)), strict=True):
            with atomic_path(out_dir / name, overwrite=True) as tmp:
                tmp.write_text(text)
        files = list(SUBSPACE_FILES)
        if plots:
            from peftlab.reporting.plots import figure_to

            figure_to(out_dir / SUBSPACE_PLOT, lambda plt: plot(plt, self.comparisons))
            files.append(SUBSPACE_PLOT)
        return md, files


def analyse(runs: list[Run], ranks: list[int]) -> Analysis:
    low, high = sorted(ranks)
    return Analysis(compare(runs, low, high), low, high)
