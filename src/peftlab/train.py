"""``peftlab-train``: validate, build, test the untouched base, fit, test, save, report.

    peftlab-train                         # SmolLM2-135M + LoRA on the date task
    peftlab-train method=lora method.r=4 trainer.max_steps=200
    peftlab-train -m method=lora,full seed=1,2,3
"""

from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from peftlab.callbacks import TrainingMeter
from peftlab.cli import run_app
from peftlab.config import CONF_DIR, validate
from peftlab.config.commands import TrainSchema
from peftlab.data import TaskDataModule
from peftlab.errors import ConfigError, PeftlabError
from peftlab.export import VerificationError, merge_run
from peftlab.memory import peak_rss_mb, reset_peak_rss
from peftlab.methods import BuildContext, apply_method, count_parameters, peft_config_for
from peftlab.models import display_name, enable_gradient_checkpointing, load_backbone
from peftlab.module import PeftLabModule
from peftlab.outputs import (
    atomic_path,
    check_fresh_run_dir,
    discard_unstarted_run_dir,
    metric_at,
    versions,
    write_json,
    write_jsonl,
)
from peftlab.sweeps import in_multirun, record_failure, threads_per_parallel_job, write_rerun_config
from peftlab.tasks import Task, make_task
from peftlab.trainer import make_trainer, split_metrics

log = logging.getLogger("peftlab.train")

# numbers every run reports, whatever its task (dotted metrics.json keys)
RUN_NUMBERS = ("train.steps", "train.wall_s", "train.tokens_per_s", "memory.peak_rss_mb", "params.trainable",
               "params.total", "params.trainable_pct")


def objective_key(conf: TrainSchema, task: Task) -> str:
    """The metrics.json key a sweeper optimises: ``objective``, or the task's primary test metric."""
    if conf.objective is None:
        return f"test.{task.primary_metric}"
    splits = ("test", "zero_shot") if conf.zero_shot else ("test",)
    known = [f"{s}.{m}" for s in splits for m in task.metric_names] + ["val.loss", *RUN_NUMBERS]
    if conf.objective not in known:
        raise ConfigError(f"objective: {conf.objective!r} is not a number this run reports "
                          f"(known: {', '.join(known)})")
    return conf.objective


def evaluate(trainer: L.Trainer, module: PeftLabModule, data: TaskDataModule) -> dict[str, float]:
    """Test ``module`` on the data module's test split."""
    results = trainer.test(module, datamodule=data, verbose=False)
    return split_metrics(results[0], "test")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config; returns what it writes to metrics.json."""
    run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.paths.run_dir)
    try:
        conf = validate(cfg, TrainSchema)
        check_fresh_run_dir(run_dir)
        metrics = _train(conf, cfg, run_dir)
    except PeftlabError:
        discard_unstarted_run_dir(run_dir)
        raise
    # after _train has returned, so that the training model, optimizer and trainer are freed: the
    # merge loads the saved adapter afresh
    if conf.merge_after and metrics.get("adapter") and type(conf.method).capabilities.mergeable:
        metrics["merge"] = _merge_after(conf, run_dir, metrics["test"])
        write_json(run_dir / "metrics.json", metrics)
    return metrics


def _train(conf: TrainSchema, cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    gc.collect()  # what an earlier job of the same sweep process left behind
    reset_peak_rss()
    L.seed_everything(conf.seed, workers=True, verbose=False)
    threads = conf.hardware.threads or threads_per_parallel_job()
    if threads:
        torch.set_num_threads(threads)
    task = make_task(conf.data)
    objective = objective_key(conf, task)
    dry = bool(conf.trainer.fast_dev_run)

    backbone = load_backbone(conf.model, conf.paths.cache_dir, task, conf.precision.dtype)
    data = TaskDataModule(task, backbone.tokenizer, seed=conf.seed)
    data.setup()
    if conf.model.gradient_checkpointing:
        enable_gradient_checkpointing(backbone.model)
    # the method's own checks against this backbone (target modules, init text...) before any work
    context = BuildContext(task, backbone.model, backbone.tokenizer, backbone.path)
    peft_config_for(conf.method, context)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_rerun_config(cfg, run_dir)
    log.info("model %s (%s), task %s %s", display_name(conf.model), backbone.path, conf.data.name, data.sizes())

    zero_shot: Optional[dict[str, float]] = None
    if conf.zero_shot and not dry:  # the untouched base, before the method is applied
        base = PeftLabModule(backbone.model, task, backbone.tokenizer)
        zero_shot = evaluate(make_trainer(conf, evaluation=True), base, data)
        write_jsonl(run_dir / "zero_shot_predictions.jsonl", base.predictions)
        log.info("zero-shot test: %s", zero_shot)

    model = apply_method(backbone.model, conf.method, context)
    params = count_parameters(model)
    log.info("method %s: %s trainable of %s parameters (%.4f%%)", conf.method.name,
             f"{params['trainable']:,}", f"{params['total']:,}", params["trainable_pct"])
    module = PeftLabModule(model, task, backbone.tokenizer, conf.optim)
    trainer = make_trainer(conf)
    trainer.fit(module, datamodule=data, ckpt_path=conf.resume_from)
    val = split_metrics(trainer.callback_metrics, "val")
    test = evaluate(trainer, module, data)
    if dry:
        log.info("fast_dev_run: nothing saved; test on one batch: %s", test)
        return {"test": test}
    if not trainer.is_global_zero:
        return {"test": test}

    if conf.save_adapter:
        with atomic_path(run_dir / "adapter") as tmp:
            model.save_pretrained(tmp)
            backbone.tokenizer.save_pretrained(tmp)
    write_jsonl(run_dir / "test_predictions.jsonl", module.predictions)

    meter = next((c for c in trainer.callbacks if isinstance(c, TrainingMeter)), None)
    speed = meter.summary if meter else {}
    metrics = {
        "model": display_name(conf.model),
        "method": conf.method.name,
        "task": conf.data.name,
        "task_type": task.name,
        "primary_metric": task.primary_metric,
        "greater_is_better": task.greater_is_better,
        "objective": objective,
        "seed": conf.seed,
        "params": params,
        "zero_shot": zero_shot,
        "test": test,
        "val": val,
        "train": {"steps": int(trainer.global_step), "wall_s": speed.get("wall_s"),
                  "tokens_per_s": speed.get("tokens_per_s"), "tokens": speed.get("tokens")},
        "memory": {"peak_rss_mb": round(peak_rss_mb(), 1), "peak_cuda_mb": speed.get("peak_cuda_mb")},
        "total_wall_s": round(time.perf_counter() - started, 2),
        "base_model": backbone.path,
        "adapter": str(run_dir / "adapter") if conf.save_adapter else None,
        "data": data.sizes(),
        "threads": torch.get_num_threads(),
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "versions": versions(),
    }
    write_json(run_dir / "metrics.json", metrics)
    log.info("done\n%s", summary(metrics, task, run_dir))
    return metrics


def _merge_after(conf: TrainSchema, run_dir: Path, adapter_test: dict[str, float]) -> dict[str, Any]:
    """The verified merge of peftlab-merge, right after training; its outcome goes to metrics.json."""
    try:
        report = merge_run(run_dir, conf, run_dir / "merged", report_dir=run_dir, adapter_metrics=adapter_test)
    except VerificationError as err:
        write_json(run_dir / "metrics.json", {**json.loads((run_dir / "metrics.json").read_text()),
                                              "merge": {"passed": False, "error": str(err)}})
        raise
    checks = report["checks"]["reloaded"]
    return {"passed": report["passed"], "out_dir": report["out_dir"], "max_abs_error": checks["max_abs_error"],
            "max_abs_error_fp64": checks.get("max_abs_error_fp64"),
            "top1_agreement": checks["top1_agreement"], "merged_test": report["metrics"]["merged"],
            "latency_merged_over_base": report["latency"]["merged_over_base"]}


def summary(m: dict[str, Any], task: Task, run_dir: Path) -> str:
    p = m["params"]
    lines = [f"{m['model']} + {m['method']} on {m['task']} (seed {m['seed']})",
             f"  trainable parameters: {p['trainable']:,} of {p['total']:,} ({p['trainable_pct']:.3f}%)"]
    for key in task.metric_names:
        if key in m["test"]:
            before = f"zero-shot {m['zero_shot'][key]:.4f} -> " if m["zero_shot"] else ""
            lines.append(f"  test {key}: {before}fine-tuned {m['test'][key]:.4f}")
    lines.append(f"  training: {m['train']['steps']} steps in {m['train']['wall_s']} s "
                 f"({m['train']['tokens_per_s']} tokens/s), peak RSS {m['memory']['peak_rss_mb']} MiB")
    if m["adapter"]:
        lines.append(f"  adapter: {m['adapter']}")
    lines.append(f"  metrics: {run_dir / 'metrics.json'}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> Optional[float]:
    """Returns the metric a sweeper optimises (``objective``). In a multirun a failing job is
    recorded (failed.json) and the sweep goes on; a single run fails as usual."""
    try:
        metrics = train(cfg)
    except Exception as err:
        if not in_multirun():
            raise
        log.exception("job failed: %s", err)
        record_failure(Path(HydraConfig.get().runtime.output_dir), err)
        return float("nan")  # optuna records a NaN as a failed trial and goes on
    return metric_at(metrics, metrics.get("objective") or "")


def main() -> None:
    run_app(_hydra_main, "peftlab-train")


if __name__ == "__main__":
    main()
