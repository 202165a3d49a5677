"""One training job as named steps, behind the command's checks (engine/train.py): set up the
backbone and the data, test the untouched model (zero-shot), apply the method, fit, test, save the
adapter, and the record that becomes metrics.json.

A job that diverges stops at the first non-finite loss or gradient and raises ``Diverged`` carrying
its record (``status: diverged``, no adapter); a job given ``resume_from`` inside its own folder
continues a killed run exactly (same config, same data order, same random generators)."""

from __future__ import annotations

import gc
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from peftlab.config.commands import TrainSchema
from peftlab.data.datamodule import TaskDataModule
from peftlab.data.sources import fingerprint
from peftlab.engine.callbacks import Diverged, TrainingMeter
from peftlab.engine.checkpoints import read_checkpoint
from peftlab.engine.distributed import SECONDARY, full_state_dict, threads_per_parallel_job
from peftlab.engine.forgetting import Forgetting
from peftlab.engine.kl_to_base import KLToBase
from peftlab.engine.module import PeftLabModule
from peftlab.engine.precision import autocast, keep_trained_weights, precision_record
from peftlab.engine.selection import BestCheck, select_weights, validate_chosen
from peftlab.engine.trainer import finished_loggers, log_run_config, make_trainer, split_metrics
from peftlab.export.card import adapter_card
from peftlab.methods import BuildContext, apply_method, count_parameters, peft_config_for, save_adapter
from peftlab.models import Backbone, display_name, enable_gradient_checkpointing, load_backbone
from peftlab.models.quantized import device_map, quantization_config
from peftlab.objectives import make_objective
from peftlab.runs.files import atomic_path, remove_stale_temps, write_jsonl
from peftlab.runs.memory import peak_rss_mb, reset_peak_rss
from peftlab.runs.metrics import machine, metric_at, versions
from peftlab.runs.rerun import write_rerun_config
from peftlab.runs.resume import check_same_config, check_same_data
from peftlab.tasks import Task

log = logging.getLogger("peftlab.train")
# metrics.json status of a run that trained to the end but whose primary test metric (or objective) is
# not a finite number: no result, so reports and sweeps never count it as finished
NAN_METRIC = "nan_metric"


class TrainingJob:
    """``run()`` goes through the steps; each step reads and sets the job's attributes. Only the
    first process of a distributed run writes the run folder; the others compute with it."""

    backbone: Backbone
    data: TaskDataModule
    model: torch.nn.Module
    module: PeftLabModule

    def __init__(self, conf: TrainSchema, cfg: DictConfig, run_dir: Path, task: Task, objective: str):
        self.conf, self.cfg, self.run_dir, self.task, self.objective = conf, cfg, Path(run_dir), task, objective
        self.training_objective = make_objective(task, conf)  # how it trains (peftlab/objectives/)
        self.writes = not SECONDARY
        self.dry = bool(conf.trainer.fast_dev_run)  # a smoke test: nothing is saved
        task.run_dir, task.writes_records = self.run_dir, self.writes and not self.dry
        self.started = time.perf_counter()
        self.checkpoint: Optional[dict[str, Any]] = None

    def run(self) -> dict[str, Any]:
        self.set_up()
        zero_shot = None if self.conf.init_adapter else self.zero_shot(self.backbone.model)
        forgetting, kl = self.measures_before()
        self.apply_method()
        if self.conf.init_adapter:  # the adapter the run starts from is what it is compared with
            zero_shot = self.zero_shot(self.model)
        record = self.start_record(zero_shot)
        best = self.best_checkpoint()
        trainer = make_trainer(self.conf, extra=(best,) if best is not None else ())
        with finished_loggers(trainer):  # each logger's run ends with the job (a notebook's next run starts its own)
            log_run_config(trainer, self.cfg, record["params"])
            self.fit(trainer, record)
            selection = self.select(trainer, best)
            val = self.validate(trainer)
            test = self.test(trainer) if self.conf.test else None
        forgotten = forgetting.record(self.model) if forgetting is not None else None  # every process (sharded)
        moved = kl.record(self.model) if kl is not None else None
        if self.dry:
            log.info("fast_dev_run: nothing saved; test on one batch: %s", test)
            return {"test": test}
        state = self.gathered_state()  # every process takes part when the model is sharded
        if not trainer.is_global_zero or not self.writes:
            return {"test": test}
        self.save(state, test)
        return self.finish_record(record, trainer, test=test, val=val, selection=selection, forgetting=forgotten,
                                  kl_to_base=moved)

    # ------------------------------------------------------------------------------------- steps
    def set_up(self) -> None:
        """Seeds and threads, the backbone and the data, the method's own checks against this
        backbone, the checkpoint to resume from, and the run's config files."""
        conf = self.conf
        if self.writes:  # what a killed save left here and in checkpoints/ (this process holds the folder's lock)
            for folder in (self.run_dir, self.run_dir / "checkpoints"):
                remove_stale_temps(folder)
        if self.writes and conf.resume_from and Path(conf.resume_from).resolve().is_relative_to(self.run_dir.resolve()):
            check_same_config(self.cfg, self.run_dir)  # resuming in place
        gc.collect()  # what an earlier job of the same sweep process left behind
        reset_peak_rss()
        L.seed_everything(conf.seed, workers=True, verbose=False)
        threads = conf.hardware.threads or threads_per_parallel_job()
        if threads:
            torch.set_num_threads(threads)
        self.backbone = load_backbone(conf.model, conf.paths.cache_dir, self.task, conf.precision.dtype,
                                      quantization_config(conf.precision), device_map(conf.hardware))
        t = conf.trainer
        self.data = TaskDataModule(self.task, self.backbone.tokenizer, seed=conf.seed, limits={
            "val": 1 if self.dry else t.limit_val_batches, "test": 1 if self.dry else t.limit_test_batches})
        self.data.setup()
        if conf.precision.quantize:  # norms in fp32, inputs that carry gradients to the adapters (k-bit preparation)
            from peft import prepare_model_for_kbit_training

            prepare_model_for_kbit_training(self.backbone.model, use_gradient_checkpointing=False)
        if conf.model.gradient_checkpointing:
            enable_gradient_checkpointing(self.backbone.model)
        self.context = BuildContext(self.task, self.backbone.model, self.backbone.tokenizer, self.backbone.path,
                                    batches=self.data.sample_batches)
        peft_config_for(conf.method, self.context)  # target modules, init text... before any work
        self.fingerprint = fingerprint(conf.data)
        self.checkpoint = read_checkpoint(conf.resume_from) if conf.resume_from else None
        if self.checkpoint is not None and Path(conf.resume_from).resolve().is_relative_to(self.run_dir.resolve()):
            check_same_data(self.checkpoint.get("data_fingerprint"), self.fingerprint)
        if self.writes:
            with atomic_path(self.run_dir / "config.yaml", overwrite=True) as tmp:
                tmp.write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
            write_rerun_config(self.cfg, self.run_dir)
        log.info("model %s (%s), task %s %s", display_name(conf.model), self.backbone.path, conf.data.name,
                 self.data.sizes())

    def zero_shot(self, model: torch.nn.Module) -> Optional[dict[str, float]]:
        """The test metrics of the model the run starts from (``zero_shot`` in metrics.json)."""
        if not self.conf.zero_shot or self.dry:
            return None
        start = PeftLabModule(model, self.task, self.backbone.tokenizer)
        metrics = test_metrics(make_trainer(self.conf, evaluation=True), start, self.data)
        if self.writes:
            write_jsonl(self.run_dir / "zero_shot_predictions.jsonl", start.predictions)
        log.info("zero-shot test%s: %s", " (the starting adapter)" if self.conf.init_adapter else "", metrics)
        return metrics

    def measures_before(self) -> tuple[Optional[Forgetting], Optional[KLToBase]]:
        """What is measured of the base before the method touches it (language-model tasks): its loss
        on general text, and its answers to the task's own prompts."""
        if not self.task.generative or self.dry:
            return None, None
        c, bb, cast = self.conf, self.backbone, autocast(self.conf.precision, self.conf.hardware)
        forgetting = Forgetting(c.forgetting, bb.tokenizer, bb.model, cast) if c.forgetting is not None else None
        prompts = [e["prompt_ids"] for e in self.data.splits.get(c.kl_to_base.split, [])] if c.kl_to_base else []
        kl = KLToBase(c.kl_to_base, prompts, c.data.max_new_tokens, bb.tokenizer, bb.model, cast) if prompts else None
        return forgetting, kl

    def apply_method(self) -> None:
        """Wrap the backbone (or load the starting adapter), set what trains, build the LightningModule
        and put the resumed run's trainable weights in place."""
        conf = self.conf
        self.task.before_wrapping(self.backbone.model)
        self.training_objective.before_wrapping(self.backbone.model)
        self.model = apply_method(self.backbone.model, conf.method, self.context, conf.init_adapter)
        keep_trained_weights(self.model, conf.precision)  # bf16_base: the trained weights in fp32
        with autocast(conf.precision, conf.hardware)():  # a precomputed reference: computed as training computes
            self.task.before_training(self.model, self.data)
            self.training_objective.before_training(self.model, self.data)
        self.module = PeftLabModule(self.model, self.task, self.backbone.tokenizer, conf.optim,
                                    shard=conf.hardware.strategy == "fsdp", method=conf.method,
                                    training_objective=self.training_objective)
        self.module.data_fingerprint = self.fingerprint
        self.module.full_validation = conf.validation.at_every_check
        if self.checkpoint is not None:
            self.module.on_load_checkpoint(self.checkpoint)  # checks the checkpoint fits, before any training
            log.info("resuming from %s (step %d)", conf.resume_from, self.checkpoint["global_step"])
            self.checkpoint = None

    def start_record(self, zero_shot: Optional[dict[str, float]]) -> dict[str, Any]:
        """What metrics.json says of the run before training: what it is and what it starts from."""
        conf, task = self.conf, self.task
        params = count_parameters(self.model)
        log.info("method %s: %s trainable of %s parameters (%.4f%%)", conf.method.name,
                 f"{params['trainable']:,}", f"{params['total']:,}", params["trainable_pct"])
        return {"model": display_name(conf.model), "method": conf.method.name, "task": conf.data.name,
                "task_type": task.name, "primary_metric": task.primary_metric,
                "greater_is_better": task.greater_is_better, "objective": self.objective,
                "training_objective": self.training_objective.name,
                "tune_on_test": conf.tune_on_test, "margins": dict(conf.margins or {}), "claim": conf.claim,
                "seed": conf.seed,
                "status": "running", "params": params, "zero_shot": zero_shot, "init_adapter": conf.init_adapter,
                "tags": list(conf.tags), "precision": precision_record(conf.precision),
                "started_at": _now(), **task.settings_record(), **self.training_objective.settings_record()}

    def fit(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        try:
            trainer.fit(self.module, datamodule=self.data, ckpt_path=self.conf.resume_from)
        except Diverged as err:  # the record says so, and nothing is exported
            last = self.run_dir / "checkpoints" / "last.ckpt"
            err.record = {**record, "status": "diverged", "diverged": {"step": err.step, "reason": err.what},
                          "last_checkpoint": str(last) if last.exists() else None, "overrides": _overrides(),
                          "versions": versions()} if self.writes else None
            err.note = "nothing was exported; metrics.json says status: diverged" + (
                f"; the last good checkpoint: {last}" if last.exists() else "")
            raise

    def best_checkpoint(self) -> Optional[BestCheck]:
        """``validation.select=best``: the callback that keeps the best validation check's weights."""
        if self.conf.validation.select != "best" or self.dry:
            return None
        return BestCheck(self.run_dir, self.task.primary_metric, self.task.greater_is_better)

    def select(self, trainer: L.Trainer, best: Optional[BestCheck]) -> dict[str, Any]:
        return select_weights(trainer, self.module, best)

    def validate(self, trainer: L.Trainer) -> Optional[dict[str, float]]:
        return None if self.data.limits.get("val") == 0 else validate_chosen(trainer, self.module, self.data)

    def test(self, trainer: L.Trainer) -> dict[str, float]:
        return test_metrics(trainer, self.module, self.data)

    def gathered_state(self) -> Optional[dict[str, torch.Tensor]]:
        return full_state_dict(self.model) if self.conf.save_adapter else None

    def save(self, state: Optional[dict[str, torch.Tensor]], test: Optional[dict[str, float]] = None) -> None:
        """The adapter (peft format; the whole model for full fine-tuning) with the tokenizer and its
        model card (README.md: export/card.py), and every test prediction (a run that tested)."""
        if self.conf.save_adapter:
            # overwrite: a resumed run replaces the adapter a kill left without its metrics.json
            with atomic_path(self.run_dir / "adapter", overwrite=True) as tmp:
                several = len(getattr(self.model, "peft_config", {})) > 1  # a frozen reference beside the policy
                only = {"selected_adapters": [self.model.active_adapter]} if several else {}
                save_adapter(self.model, self.conf.method, tmp, **({"state_dict": state} if state is not None else {}),
                             **only)
                self.backbone.tokenizer.save_pretrained(tmp)
                adapter_card(tmp, self.run_dir / "adapter", self.conf, self.run_dir, self.backbone.path, test,
                             self.task.model_kwargs())
        if self.conf.test:
            write_jsonl(self.run_dir / "test_predictions.jsonl", self.module.predictions)

    def finish_record(self, record: dict[str, Any], trainer: L.Trainer, **results: Any) -> dict[str, Any]:
        """The finished run's metrics.json: results, training speed and memory, where things are."""
        conf, adapter = self.conf, self.run_dir / "adapter"
        meter = next((c for c in trainer.callbacks if isinstance(c, TrainingMeter)), None)
        speed = meter.summary if meter else {}
        per_batch = ("real_tokens_per_batch", "padded_tokens_per_batch", "padding_share")
        record.update(results, status="finished", **{
            "train": {"steps": int(trainer.global_step), "wall_s": speed.get("wall_s"),
                      "tokens_per_s": speed.get("tokens_per_s"), "tokens": speed.get("tokens"),
                      **{k: speed.get(k) for k in per_batch},
                      "group_by_length": conf.data.group_by_length, "resumed_from": conf.resume_from},
            "memory": {"peak_rss_mb": round(peak_rss_mb(), 1), "peak_cuda_mb": speed.get("peak_cuda_mb")},
            "total_wall_s": round(time.perf_counter() - self.started, 2),
            "base_model": self.backbone.path,
            "adapter": str(adapter) if conf.save_adapter else None,
            # the trained weights' bytes on disk (the adapter's safetensors; the whole model for full)
            "adapter_mb": round(sum(f.stat().st_size for f in adapter.glob("*.safetensors")) / 2**20, 3)
            if conf.save_adapter else None,
            "data": self.data.sizes(),
            "threads": torch.get_num_threads(),
            "overrides": _overrides(),
            "versions": versions(),
            "machine": machine(),
            "finished_at": _now(),
        }, **self.task.settings_record(),
            **self.training_objective.settings_record())  # again: what training measured (RL's phase times)
        keys = dict.fromkeys([f"test.{self.task.primary_metric}", self.objective])
        nan = [k for k in keys if (v := metric_at(record, k)) is not None and not math.isfinite(v)]
        if nan:
            record.update(status=NAN_METRIC, nan_metric=nan)
            log.warning("%s is not a finite number: metrics.json says status: %s, and reports count the run as "
                        "no result", " and ".join(nan), NAN_METRIC)
        return record


# ------------------------------------------------------------------------------------------ helpers
def test_metrics(trainer: L.Trainer, module: PeftLabModule, data: TaskDataModule) -> dict[str, float]:
    """``module``'s metrics on the data module's test split."""
    results = trainer.test(module, datamodule=data, verbose=False)
    return split_metrics(results[0], "test")


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _now() -> str:
    """The time in UTC, to the second, as metrics.json records when a run started and finished."""
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
