"""One table from a peftlab-combine sweep (or any combine folders): one row per combination, with
its test metric on every source task, the mean over tasks, the forgetting change against the base,
and the sources alone and the base as the first rows (from the first folder).

    python scripts/combination_table.py outputs/combines/multirun_<stamp> [more folders...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows_of(folders: list[Path]) -> list[dict]:
    reports = []
    for folder in folders:
        found = sorted(folder.glob("*/combine.json"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit()
                       else 10**9) or [folder / "combine.json"]
        for path in found:
            if not path.is_file():
                raise SystemExit(f"combination_table: no combine.json in {folder} or its job folders")
            report = json.loads(path.read_text())
            if "table" not in report:
                raise SystemExit(f"combination_table: {path} holds no table (combined with evaluate=false)")
            reports.append(report)
    return reports


def table(reports: list[dict]) -> str:
    tasks = reports[0]["primary_metrics"]
    head = ["model", "weights", "options", *(f"{t} {m}" for t, m in tasks.items()), "mean", "forgetting Δ"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---|" + "---:|" * (len(tasks) + 2)]

    def line(label: str, weights: str, options: str, row: dict) -> str:
        values = [row["tasks"][t][m] for t, m in tasks.items() if t in row["tasks"]]
        cells = [f"{row['tasks'][t][m]:.3f}" if t in row["tasks"] else "—" for t, m in tasks.items()]
        delta = row.get("forgetting", {}).get("delta")
        return "| " + " | ".join([label, weights, options, *cells, f"{sum(values) / len(values):.3f}",
                                   "—" if delta is None else f"{delta:+.4f}"]) + " |"

    for row in reports[0]["table"]:
        if row["kind"] != "combination":
            lines.append(line("base alone" if row["kind"] == "base" else f"{row['adapter']} alone", "", "", row))
    for r in reports:
        row = next(x for x in r["table"] if x["kind"] == "combination")
        options = ", ".join(f"{k}={r[k]}" for k in ("density", "majority_sign_method", "svd_rank")
                            if r.get(k) is not None)
        sources = " + ".join(x["adapter"] for x in r["table"] if x["kind"] == "source")
        lines.append(line(f"{r['combination_type']} ({sources})", ",".join(f"{w:g}" for w in r["weights"]), options,
                          row))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    print(table(rows_of(ap.parse_args().folders)))


if __name__ == "__main__":
    main()
