"""The work of ``peftlab-params``: trainable and total parameters of any model x method, with no
weights. The model is built on the meta device from its config and wrapped by the same
``apply_method`` that training uses, so the counts are the ones a run would report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

import peftlab.methods  # noqa: F401  (registers the method plug-ins)
from peftlab.config import validate
from peftlab.config.commands import ParamsSchema
from peftlab.errors import ConfigError
from peftlab.methods import BuildContext, apply_method, count_parameters
from peftlab.runs.files import atomic_path, write_json
from peftlab.runs.sweeps import in_multirun
from peftlab.tasks import task_class

COLUMNS = ("model", "method", "task_type", "trainable", "adapter_only", "total", "trainable_pct")


def count(conf: ParamsSchema) -> dict[str, Any]:
    """One row: the counts of ``conf.model`` under ``conf.method``."""
    from peftlab.config.plugins import model_serves
    from peftlab.models import build_on_meta, display_name  # torch, once the config is valid

    task_type = conf.task_type or conf.model.tasks[0]
    if not model_serves(conf.model.tasks, task_type):
        raise ConfigError(f"task_type={task_type} does not fit model={conf.model.name}, "
                          f"which serves {', '.join(conf.model.tasks)}")
    if not conf.method.capabilities.meta_device:
        raise ConfigError(f"method={conf.method.name} cannot be counted on the meta device")
    task = task_class(task_type)(data=None, labels=["label_0", "label_1"])  # a two-class head where a task has one
    backbone = build_on_meta(conf.model, task, conf.paths.cache_dir)
    model = apply_method(backbone, conf.method, BuildContext(task, backbone, meta=True))
    counts = count_parameters(model)
    heads = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n)
    return {"model": display_name(conf.model), "method": conf.method.name, "task_type": task_type,
            "trainable": counts["trainable"], "adapter_only": counts["trainable"] - heads,
            "total": counts["total"], "trainable_pct": counts["trainable_pct"], "reference": conf.reference}


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table; counts exact, with a human-readable size beside them (and the paper's
    figure when a row has one)."""
    ref = any(r.get("reference") for r in rows)
    head = "| model | method | task | trainable | adapter only | total | trainable % |" + (" paper |" if ref else "")
    lines = [head, "|---|---|---|---:|---:|---:|---:|" + ("---|" if ref else "")]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['task_type']} "
                     f"| {r['trainable']:,} ({_human(r['trainable'])})"
                     f" | {r['adapter_only']:,} ({_human(r['adapter_only'])}) | {r['total']:,} ({_human(r['total'])})"
                     f" | {r['trainable_pct']:.4f} |" + (f" {r.get('reference') or ''} |" if ref else ""))
    return "\n".join(lines)


class ParamsTable(Callback):
    """After a multirun, print one table over every job and write it to ``params.md``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        files = sorted(sweep.glob("*/params.json"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
        rows = [json.loads(p.read_text()) for p in files]
        if rows:
            table = format_table(rows)
            with atomic_path(sweep / "params.md", overwrite=True) as tmp:
                tmp.write_text(table + "\n")
            print(table)


def params_from_config(cfg: DictConfig, out: Optional[Path] = None) -> dict[str, Any]:
    """Count ``cfg``'s model x method into ``out``/params.json (and print the row as a table when
    it is not one job of a sweep); returns the row."""
    conf = validate(cfg, ParamsSchema)
    row = count(conf)
    if out is not None:
        write_json(out / "params.json", row)
    if not in_multirun():
        print(format_table([row]))
    return row
