"""One training job, behind the command's checks (train.py): build the backbone and the data, test
the untouched base, apply the method, fit, test, save the adapter and metrics.json.

A job that diverges stops at the first non-finite loss or gradient and leaves a metrics.json with
``status: diverged`` (and no adapter); a job given ``resume_from`` inside its own folder continues
a killed run exactly (same config, same data order, same random generators)."""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from peftlab.callbacks import Diverged, TrainingMeter
from peftlab.cli import quiet_libraries
from peftlab.config.commands import TrainSchema
from peftlab.data.datamodule import TaskDataModule
from peftlab.distributed import SECONDARY
from peftlab.errors import ConfigError
from peftlab.forgetting import Forgetting
from peftlab.memory import peak_rss_mb, reset_peak_rss
from peftlab.methods import BuildContext, apply_method, count_parameters, peft_config_for, save_adapter
from peftlab.models import display_name, enable_gradient_checkpointing, load_backbone
from peftlab.module import PeftLabModule, read_checkpoint
from peftlab.outputs import atomic_path, remove_stale_temps, versions, write_json, write_jsonl
from peftlab.precision import device_map, quantization_config
from peftlab.sweeps import threads_per_parallel_job, write_rerun_config
from peftlab.tasks import Task
from peftlab.trainer import finished_loggers, log_run_config, make_trainer, split_metrics

log = logging.getLogger("peftlab.train")


def evaluate(trainer: L.Trainer, module: PeftLabModule, data: TaskDataModule) -> dict[str, float]:
    """Test ``module`` on the data module's test split."""
    results = trainer.test(module, datamodule=data, verbose=False)
    return split_metrics(results[0], "test")


def check_same_config(cfg: DictConfig, run_dir: Path) -> None:
    """Resuming in place: the composed config must be the one the run started with."""
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    now = OmegaConf.to_container(cfg, resolve=True)

    def first_difference(a: Any, b: Any, key: str = "") -> Optional[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                if k != "resume_from" or key:
                    found = first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
                    if found:
                        return found
            return None
        return None if a == b else f"{key} ({a!r} then, {b!r} now)"

    diff = first_difference(saved, now)
    if diff:
        raise ConfigError(f"resume: the config differs from the one {run_dir} started with: {diff}")


def run_job(conf: TrainSchema, cfg: DictConfig, run_dir: Path, task: Task, objective: str) -> dict[str, Any]:
    started = time.perf_counter()
    quiet_libraries()
    writes = not SECONDARY  # only the first process of a distributed run writes the run folder
    if writes:
        remove_stale_temps(run_dir)  # what a killed save left here (this process holds the folder's lock)
    in_place = bool(conf.resume_from) and Path(conf.resume_from).resolve().is_relative_to(run_dir.resolve())
    if in_place and writes:
        check_same_config(cfg, run_dir)
    gc.collect()  # what an earlier job of the same sweep process left behind
    reset_peak_rss()
    L.seed_everything(conf.seed, workers=True, verbose=False)
    threads = conf.hardware.threads or threads_per_parallel_job()
    if threads:
        torch.set_num_threads(threads)
    dry = bool(conf.trainer.fast_dev_run)

    backbone = load_backbone(conf.model, conf.paths.cache_dir, task, conf.precision.dtype,
                             quantization_config(conf.precision), device_map(conf.hardware))
    t = conf.trainer
    data = TaskDataModule(task, backbone.tokenizer, seed=conf.seed, limits={
        "val": 1 if t.fast_dev_run else t.limit_val_batches, "test": 1 if t.fast_dev_run else t.limit_test_batches})
    data.setup()
    if conf.precision.quantize:  # norms in fp32, inputs that carry gradients to the adapters (peft's k-bit preparation)
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(backbone.model, use_gradient_checkpointing=False)
    if conf.model.gradient_checkpointing:
        enable_gradient_checkpointing(backbone.model)
    # the method's own checks against this backbone (target modules, init text...) before any work
    context = BuildContext(task, backbone.model, backbone.tokenizer, backbone.path, batches=data.sample_batches)
    peft_config_for(conf.method, context)
    checkpoint = read_checkpoint(conf.resume_from) if conf.resume_from else None
    if writes:
        with atomic_path(run_dir / "config.yaml", overwrite=True) as tmp:
            tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        write_rerun_config(cfg, run_dir)
    log.info("model %s (%s), task %s %s", display_name(conf.model), backbone.path, conf.data.name, data.sizes())

    def before(model: torch.nn.Module) -> Optional[dict[str, float]]:
        """The test metrics of the model the run starts from (zero_shot in metrics.json)."""
        if not conf.zero_shot or dry:
            return None
        start = PeftLabModule(model, task, backbone.tokenizer)
        metrics = evaluate(make_trainer(conf, evaluation=True), start, data)
        if writes:
            write_jsonl(run_dir / "zero_shot_predictions.jsonl", start.predictions)
        log.info("zero-shot test%s: %s", " (the starting adapter)" if conf.init_adapter else "", metrics)
        return metrics

    # the untouched base, before the method is applied; or the adapter the run starts from
    zero_shot = None if conf.init_adapter else before(backbone.model)
    forgetting = Forgetting(conf.forgetting, backbone.tokenizer, backbone.model) \
        if conf.forgetting is not None and task.generative and not dry else None
    task.before_wrapping(backbone.model)
    model = apply_method(backbone.model, conf.method, context, conf.init_adapter)
    task.before_training(model, data)
    if conf.init_adapter:
        zero_shot = before(model)
    params = count_parameters(model)
    log.info("method %s: %s trainable of %s parameters (%.4f%%)", conf.method.name,
             f"{params['trainable']:,}", f"{params['total']:,}", params["trainable_pct"])
    module = PeftLabModule(model, task, backbone.tokenizer, conf.optim, shard=conf.hardware.strategy == "fsdp",
                           method=conf.method)
    if checkpoint is not None:
        module.on_load_checkpoint(checkpoint)  # the run's trainable parameters, before any training
        log.info("resuming from %s (step %d)", conf.resume_from, checkpoint["global_step"])
        del checkpoint
    metrics: dict[str, Any] = {
        "model": display_name(conf.model), "method": conf.method.name, "task": conf.data.name,
        "task_type": task.name, "primary_metric": task.primary_metric, "greater_is_better": task.greater_is_better,
        "objective": objective, "seed": conf.seed, "status": "running", "params": params, "zero_shot": zero_shot,
        "init_adapter": conf.init_adapter, **task.settings_record(),
    }
    trainer = make_trainer(conf)
    with finished_loggers(trainer):  # each logger's run ends with the job (a notebook's next run starts its own)
        log_run_config(trainer, cfg, params)
        try:
            trainer.fit(module, datamodule=data, ckpt_path=conf.resume_from)
        except Diverged as err:
            last = run_dir / "checkpoints" / "last.ckpt"
            if not writes:
                raise
            write_json(run_dir / "metrics.json", {
                **metrics, "status": "diverged", "diverged": {"step": err.step, "reason": err.what},
                "last_checkpoint": str(last) if last.exists() else None, "overrides": _overrides(),
                "versions": versions()})
            raise Diverged(err.step, f"{err.what}; nothing was exported; metrics.json says status: diverged"
                           + (f"; the last good checkpoint: {last}" if last.exists() else "")) from None
        val = split_metrics(trainer.callback_metrics, "val")
        test = evaluate(trainer, module, data)
    forgotten = forgetting.record(model) if forgetting is not None else None  # every process (a sharded model)
    if dry:
        log.info("fast_dev_run: nothing saved; test on one batch: %s", test)
        return {"test": test}
    state = full_state_dict(model) if conf.save_adapter else None  # every process takes part when sharded
    if not trainer.is_global_zero or not writes:
        return {"test": test}

    if conf.save_adapter:
        with atomic_path(run_dir / "adapter") as tmp:
            only = {"selected_adapters": [model.active_adapter]} if len(getattr(model, "peft_config", {})) > 1 else {}
            save_adapter(model, conf.method, tmp, **({"state_dict": state} if state is not None else {}), **only)
            backbone.tokenizer.save_pretrained(tmp)
    write_jsonl(run_dir / "test_predictions.jsonl", module.predictions)
    meter = next((c for c in trainer.callbacks if isinstance(c, TrainingMeter)), None)
    speed = meter.summary if meter else {}
    metrics.update({
        "status": "finished",
        "test": test,
        "val": val,
        "forgetting": forgotten,
        "train": {"steps": int(trainer.global_step), "wall_s": speed.get("wall_s"),
                  "tokens_per_s": speed.get("tokens_per_s"), "tokens": speed.get("tokens"),
                  **{k: speed.get(k) for k in ("real_tokens_per_batch", "padded_tokens_per_batch", "padding_share")},
                  "group_by_length": conf.data.group_by_length, "resumed_from": conf.resume_from},
        "memory": {"peak_rss_mb": round(peak_rss_mb(), 1), "peak_cuda_mb": speed.get("peak_cuda_mb")},
        "total_wall_s": round(time.perf_counter() - started, 2),
        "base_model": backbone.path,
        "adapter": str(run_dir / "adapter") if conf.save_adapter else None,
        # the trained weights' bytes on disk (the adapter's safetensors; the whole model for full)
        "adapter_mb": round(sum(f.stat().st_size for f in (run_dir / "adapter").glob("*.safetensors")) / 2**20, 3)
        if conf.save_adapter else None,
        "data": data.sizes(),
        "threads": torch.get_num_threads(),
        "overrides": _overrides(),
        "versions": versions(),
    })
    write_json(run_dir / "metrics.json", metrics)
    log.info("done\n%s", summary(metrics, task, run_dir))
    return metrics


def full_state_dict(model: torch.nn.Module) -> Optional[dict[str, torch.Tensor]]:
    """The whole state dict of a model sharded by FSDP2 (gathered from every process onto the CPU of
    each), for saving; None for a model that is not sharded (it saves its own)."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


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
    if m.get("forgetting"):
        f = m["forgetting"]
        lines.append(f"  forgetting: loss on {f['text']} {f['loss_before']:.4f} -> {f['loss_after']:.4f} "
                     f"({f['delta']:+.4f})")
    if m["adapter"]:
        lines.append(f"  adapter: {m['adapter']}")
    lines.append(f"  metrics: {run_dir / 'metrics.json'}")
    return "\n".join(lines)
