"""The work of ``peftlab-eval`` and ``peftlab.evaluate()``: a run folder's adapter, or a base model
alone, on a task's split, written into the command's own folder (eval.json, predictions.jsonl)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import peftlab.methods  # noqa: F401  (registers the method schemas a run folder's config names)
from peftlab.config import validate
from peftlab.config.commands import EvalSchema, TrainSchema
from peftlab.config.schema import DataSchema, ModelSchema
from peftlab.runs.config import read_run_config, same_files
from peftlab.runs.files import atomic_path, write_json, write_jsonl
from peftlab.runs.folders import fresh_output_folder
from peftlab.runs.metrics import versions
from peftlab.tasks import Task, make_task

log = logging.getLogger("peftlab.eval")


def _run_data(run: TrainSchema, cli_overrides: list[str]) -> DataSchema:
    """The run's task with this command's ``data.<key>=`` overrides applied on top."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    node = OmegaConf.structured(run.data)
    for override in OverridesParser.create().parse_overrides(cli_overrides):
        key = override.key_or_group
        if key.startswith("data."):
            OmegaConf.update(node, key[len("data."):], override.value(), merge=True)
    return OmegaConf.to_object(node)


def evaluate_from_config(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Evaluate into ``out_dir`` (eval.json, predictions.jsonl); returns what eval.json holds."""
    conf = validate(cfg, EvalSchema)
    with fresh_output_folder(out_dir) as folder:
        return _evaluate(conf, folder)


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def one_source(conf: EvalSchema) -> tuple[Optional[Path], ModelSchema, DataSchema, Optional[str], Task]:
    """What ``run_dir=`` (or the base model alone) evaluates, checked before any model loads: (the
    run folder, the model, the task's data, the run's method, the task)."""
    run_dir = Path(conf.run_dir) if conf.run_dir else None
    model_cfg, data_cfg, method = conf.model, conf.data, None
    if run_dir is not None:  # the run folder says which model and task; never whether to run remote code
        run = read_run_config(run_dir, trust_remote_code=conf.trust_remote_code)
        model_cfg, method = run.model, run.method.name
        overrides = _overrides()
        if not any(o.startswith("data=") for o in overrides):
            data_cfg = _run_data(run, overrides)
    return run_dir, model_cfg, data_cfg, method, make_task(data_cfg)


def many_sources(conf: EvalSchema) -> tuple[list[Path], list[TrainSchema], list[Task]]:
    """``runs=``: (the run folders, their configs, the task each is scored on), every folder read and
    every adapter's config checked before any model loads."""
    from peftlab.engine.adapters import expand_runs
    from peftlab.runs.adapters import check_keeps_base
    from peftlab.runs.config import read_adapter_config

    overrides = _overrides()
    folders = expand_runs(conf.runs)
    runs = [read_run_config(d, trust_remote_code=conf.trust_remote_code, key="runs") for d in folders]
    same_files([d / "adapter" for d in folders], "runs")
    for folder in folders:  # what loading each adapter on the shared base would refuse first
        if (folder / "adapter" / "adapter_config.json").is_file():
            check_keeps_base(read_adapter_config(folder / "adapter", "runs"), folder / "adapter", "runs")
    data_given = any(o.startswith("data=") for o in overrides)
    tasks = [make_task(conf.data if data_given else _run_data(run, overrides), run=run) for run in runs]
    return folders, runs, tasks


def _evaluate(conf: EvalSchema, out_dir: Path) -> dict[str, Any]:
    if conf.runs is not None:
        return _evaluate_many(conf, out_dir)
    run_dir, model_cfg, data_cfg, method, task = one_source(conf)
    import lightning as L  # the heavy libraries, once the config is valid

    from peftlab.data.datamodule import TaskDataModule
    from peftlab.engine.module import PeftLabModule
    from peftlab.engine.trainer import make_eval_trainer, split_metrics
    from peftlab.models import display_name, load_run_model

    L.seed_everything(conf.seed, workers=True, verbose=False)
    model, tokenizer = load_run_model(model_cfg, run_dir, conf.paths.cache_dir, task, conf.precision.dtype)
    data = TaskDataModule(task, tokenizer, seed=conf.seed, test_split=conf.split, limits={"test": conf.limit_batches})
    module = PeftLabModule(model.eval(), task, tokenizer)
    results = make_eval_trainer(conf).test(module, datamodule=data, verbose=False)
    metrics = split_metrics(results[0], "test")
    report = {"run_dir": str(run_dir) if run_dir else None, "model": display_name(model_cfg), "method": method,
              "task": data_cfg.name, "task_type": task.name, "primary_metric": task.primary_metric,
              "split": conf.split, "examples": data.sizes()[conf.split], "metrics": metrics, "versions": versions()}
    write_jsonl(out_dir / "predictions.jsonl", module.predictions)
    write_json(out_dir / "eval.json", report)
    log.info("%s%s on %s/%s: %s", display_name(model_cfg), f" + {method} adapter" if method else "",
             data_cfg.name, conf.split, metrics)
    log.info("written: %s", out_dir / "eval.json")
    return report


def _evaluate_many(conf: EvalSchema, out_dir: Path) -> dict[str, Any]:
    """``runs=``: every run scored on its own task (or on ``data=``), each base loaded once for all
    the adapters of it (engine/adapters.py); eval.json and eval.md hold one row per run."""
    from peftlab.engine.adapters import score_runs

    folders, runs, tasks = many_sources(conf)
    rows, loads = score_runs(conf, folders, runs, tasks)
    report = {"split": conf.split, "runs": rows, "base_loads": loads, "versions": versions()}
    (out_dir / "predictions").mkdir(exist_ok=True)
    for i, row in enumerate(rows):
        write_jsonl(out_dir / "predictions" / f"{i}.jsonl", row.pop("predictions"))
    table = many_table(rows)
    with atomic_path(out_dir / "eval.md", overwrite=True) as tmp:
        tmp.write_text(table + "\n")
    write_json(out_dir / "eval.json", report)
    log.info("%d runs on %s, %d base load(s)\n%s", len(rows), conf.split, loads, table)
    log.info("written: %s", out_dir / "eval.json")
    return report


def many_table(rows: list[dict[str, Any]]) -> str:
    from peftlab.reporting.escape import md  # what a run folder names is text, never markup

    lines = ["| run | method | task | metric | value | loss |", "|---|---|---|---|---|---|"]
    for r in rows:
        m = r["primary_metric"]
        lines.append(f"| {md(r['run_dir'])} | {md(r['method'])} | {md(r['task'])} | {m} | {r['metrics'][m]:.4f} | "
                     f"{r['metrics'].get('loss', float('nan')):.4f} |")
    return "\n".join(lines)
