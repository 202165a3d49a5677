"""The work of ``peftlab-combine``: check the sources, load their base once with every source
adapter, combine (export/combine.py), save the combination as a plain peft adapter, then score
the base, each source alone and the combination on every source task's test split and on the
forgetting text, into one table (combine.json, combine.md in the command's own folder)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from peftlab.config import validate
from peftlab.config.commands import CombineSchema
from peftlab.runs.files import atomic_path, write_json, write_jsonl
from peftlab.runs.folders import fresh_output_folder
from peftlab.runs.metrics import versions

log = logging.getLogger("peftlab.combine")


def combine_from_config(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Combine into ``out_dir`` (adapter/, combine.json, combine.md); returns what combine.json holds."""
    conf = validate(cfg, CombineSchema)
    with fresh_output_folder(out_dir) as folder:
        return _combine(conf, folder)


def combine_sources(conf: CombineSchema) -> list[Any]:
    """The runs named by ``runs=`` (export/combine.py's ``Source``), read and checked: everything
    that can be refused before a model loads."""
    from peftlab.engine.forgetting import text_path
    from peftlab.export.combine import check_sources, read_sources

    sources = read_sources(conf)
    check_sources(sources, conf)
    if conf.forgetting is not None:
        text_path(conf.forgetting.text)  # a missing text fails before any model loads
    return sources


def _combine(conf: CombineSchema, out_dir: Path) -> dict[str, Any]:
    from peftlab.export.combine import COMBINED, options_used
    from peftlab.tasks import make_task

    sources = combine_sources(conf)
    import lightning as L  # the heavy libraries, once everything that can be refused has been

    from peftlab.engine.adapters import labelled_tasks, prose_losses, score_adapters, test_loader
    from peftlab.export.combine import combine, save_combined
    from peftlab.models.adapters import AdapterBank

    tasks = labelled_tasks([make_task(s.run.data, run=s.run) for s in sources])
    first = next(iter(tasks.values()))
    L.seed_everything(conf.seed, workers=True, verbose=False)
    bank = AdapterBank(sources[0].run.model, conf.paths.cache_dir, first)
    for s in sources:
        bank.add(s.name, s.adapter)
    combine(bank, sources, conf)
    report: dict[str, Any] = {
        "runs": [str(s.run_dir) for s in sources], "weights": [s.weight for s in sources], **options_used(conf),
        "method": sources[0].run.method.name, "base_model": bank.backbone.path, "seed": conf.seed,
        "adapter": str(out_dir / "adapter"), "versions": versions()}
    scores: dict = {}
    if conf.evaluate:
        names: list[Optional[str]] = [None, *(s.name for s in sources), COMBINED]
        scores = score_adapters(bank, names, tasks, conf.seed, conf.max_test_examples)
        losses = prose_losses(bank, names, conf.forgetting) if conf.forgetting is not None else {}
        report["table"] = [_row(name, sources, tasks, scores, losses) for name in names]
        report["primary_metrics"] = {label: t.primary_metric for label, t in tasks.items()}
    # written last, once everything was measured: a combination that fails leaves no adapter behind
    report["check"] = save_combined(bank, out_dir / "adapter", next(iter(test_loader(first, bank.tokenizer,
                                                                                     conf.seed, 8)[1])),
                                    report=report, sources=sources)  # the adapter's model card states both
    for (name, label), evaluation in scores.items():
        if name == COMBINED:
            write_jsonl(out_dir / f"predictions_{label}.jsonl", [{"prediction": p} for p in evaluation.predictions])
    if conf.evaluate:
        with atomic_path(out_dir / "combine.md", overwrite=True) as tmp:
            tmp.write_text(table_markdown(report) + "\n")
        log.info("combination %s of %s\n%s", conf.combination_type, ", ".join(report["runs"]), table_markdown(report))
    write_json(out_dir / "combine.json", report)
    log.info("written: %s (the combined adapter: %s)", out_dir / "combine.json", out_dir / "adapter")
    return report


def _row(name: Optional[str], sources, tasks, scores, losses) -> dict[str, Any]:
    from peftlab.export.combine import COMBINED

    source = next((s for s in sources if s.name == name), None)
    row: dict[str, Any] = {"adapter": "base" if name is None else name,
                           "run_dir": str(source.run_dir) if source else None,
                           "weight": source.weight if source else None,
                           "tasks": {label: scores[(name, label)].metrics for label in tasks}}
    row["kind"] = "base" if name is None else ("combination" if name == COMBINED else "source")
    if losses:
        row["forgetting"] = {"loss": losses[name], "delta": round(losses[name] - losses[None], 6)}
    return row


def objective(report: dict[str, Any]) -> float:
    """The combination's mean primary test metric over the source tasks (what a sweeper optimises)."""
    row = next((r for r in report.get("table", []) if r["kind"] == "combination"), None)
    if row is None:
        return math.nan
    values = [row["tasks"][t][m] for t, m in report["primary_metrics"].items()]
    return sum(values) / len(values)


def table_markdown(report: dict[str, Any]) -> str:
    """One row per model (the base, each source alone, the combination), one column per source
    task's primary test metric, and the forgetting loss change against the base."""
    metrics = report["primary_metrics"]
    forgetting = any("forgetting" in r for r in report["table"])
    head = ["model", "weight", *(f"{t} {m}" for t, m in metrics.items()), *(["forgetting Δ"] if forgetting else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["table"]:
        label = {"base": "base alone", "combination": f"combination ({report['combination_type']})"}.get(
            r["kind"], f"{r['adapter']} alone")
        cells = [label, "" if r["weight"] is None else f"{r['weight']:g}",
                 *(f"{r['tasks'][t][m]:.3f}" for t, m in metrics.items()),
                 *([f"{r['forgetting']['delta']:+.4f}"] if forgetting else [])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
