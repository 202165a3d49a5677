"""The method- and task-agnostic LightningModule.

It is given a built model (a peft model, or the plain backbone for full fine-tuning), a task and a
training objective, and never asks which method made the model, which task it is or how it trains:
the objective computes the training loss, the task the evaluation, the optimizer sees exactly the
parameters that require grad, and a checkpoint holds exactly those parameters and the optimizer
state.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import lightning as L
import torch

from peftlab.config.instantiate import instantiate
from peftlab.config.schema import OptimSchema
from peftlab.data.loaders import InSplitOrder, unshard
from peftlab.engine.distributed import all_sum, gather
from peftlab.errors import ConfigError
from peftlab.methods import method_spec, trainable_parameters
from peftlab.objectives import make_objective

log = logging.getLogger("peftlab.train")


def build_optimizer(model: torch.nn.Module, optim: OptimSchema, method: Any = None) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters only; in the parameter groups the
    method (a method schema) asks for, when they differ in learning rate (LoRA+)."""
    spec = method_spec(method.name) if method is not None else None
    params: Any = trainable_parameters(model)
    if spec is not None and spec.hooks.param_groups is not None:
        params = spec.hooks.param_groups(model, method, optim.lr)
        grouped = [p for group in params for p in group["params"]]
        if len(grouped) != len(trainable_parameters(model)) or {id(p) for p in grouped} != {
                id(p) for p in trainable_parameters(model)}:
            raise RuntimeError(f"method {method.name}: its parameter groups must hold every trainable parameter once")
    return instantiate(optim.optimizer, "optim.optimizer", ("torch.optim.Optimizer",), params=params, lr=optim.lr,
                       weight_decay=optim.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimSchema, total_steps: int):
    """transformers' schedule of that name with linear warmup over ``warmup_ratio`` of the steps
    (from 0 at the first step); cosine decays to ``min_lr_ratio`` of the learning rate."""
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(optim.scheduler, optim.scheduler)
    extra = {}
    if optim.scheduler == "cosine" and optim.min_lr_ratio > 0:
        name, extra = "cosine_with_min_lr", {"min_lr_rate": optim.min_lr_ratio}
    return get_scheduler(name, optimizer, num_warmup_steps=int(math.ceil(optim.warmup_ratio * total_steps)),
                         num_training_steps=total_steps, scheduler_specific_kwargs=extra)


class PeftLabModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, task: Any, tokenizer: Any, optim: Optional[OptimSchema] = None,
                 shard: bool = False, method: Any = None, training_objective: Any = None):
        super().__init__()
        # the method's schema: its hooks (peftlab.methods.MethodHooks) are called, its name never asked
        self.method = method
        self.hooks = method_spec(method.name).hooks if method is not None else None
        self._hooked_step = -1
        self.shard = shard  # FSDP (hardware=fsdp): configure_model shards the model across the processes
        self.model = model
        self.task = task  # a peftlab.tasks.Task: the data and what is measured
        # a peftlab.objectives.Objective: how a training step trains (the task's own loss where none is given)
        self.training_objective = (training_objective if training_objective is not None
                                   else make_objective(task, getattr(task, "run", None)))
        self.tokenizer = tokenizer
        self.optim = optim
        self.data_fingerprint: Optional[dict[str, str]] = None  # set by the training job
        # validation measures the loss alone, or what the test split measures when ``full_validation``
        # is set (every check, or the one after training: engine/job.py)
        self.val_metrics = task.metrics(full=False)
        self.val_full_metrics = task.metrics(full=True)
        self.full_validation = False
        self.test_metrics = task.metrics(full=True)
        self.predictions: list[dict[str, Any]] = []
        self.last_loss: Optional[torch.Tensor] = None
        self.strict_loading = False  # checkpoints hold the trainable parameters only: on_load_checkpoint checks

    def configure_model(self) -> None:
        """FSDP2 (Lightning's ModelParallelStrategy): shard every decoder layer, then the whole model,
        over the data-parallel processes; frozen and trainable parameters alike. The modules whose
        forward runs are sharded (not this LightningModule, whose forward never runs)."""
        if not self.shard or getattr(self, "_sharded", False):
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        layer_classes = set(getattr(self._backbone(), "_no_split_modules", None) or [])
        for module in self.model.modules():
            if type(module).__name__ in layer_classes:
                fully_shard(module, mesh=mesh)
        fully_shard(self.model, mesh=mesh)
        self._sharded = True

    def _backbone(self) -> torch.nn.Module:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def on_fit_start(self) -> None:
        self.model.train()  # from_pretrained returns eval mode; dropout must be on while training
        self._hooked_step = self.trainer.global_step  # the step the run starts at (a resumed run: its own)

    def on_train_start(self) -> None:
        """After a checkpoint's optimizer and schedule were restored: this run's learning rates, not
        the checkpoint's (``resume_from`` with another ``optim.lr``), said in the log."""
        configured = getattr(self, "_configured_lrs", None)
        if not configured or not self.trainer.lr_scheduler_configs:
            return
        schedule = self.trainer.lr_scheduler_configs[0].scheduler
        restored = list(schedule.base_lrs)
        if restored == configured:
            return
        for i, group in enumerate(schedule.optimizer.param_groups):
            group["lr"] *= configured[i] / restored[i]
            group["initial_lr"] = configured[i]
        schedule.base_lrs = list(configured)
        log.info("resume_from: training at this run's learning rate optim.lr=%g (the checkpoint trained at %g)",
                 configured[0], restored[0])

    # ---------------------------------------------------------------------------------- steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.training_objective.step = self.global_step
        total, count = self.training_objective.loss(self.model, batch)
        # the mean over every answer token of the step, on every process: DDP averages the processes'
        # gradients, so each process scales its sum by world / (all tokens); with one process: total / count
        world = self.trainer.world_size if self._trainer is not None else 1
        count_all = all_sum(count.detach()).clamp(min=1)
        loss = total * world / count_all
        self.last_loss = (all_sum(total.detach()) / count_all).detach()  # for the log and the divergence guard
        self.log("train/loss", self.last_loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        for name, value in self.training_objective.step_logs().items():
            self.log(f"train/{name}", value, batch_size=batch["input_ids"].shape[0], sync_dist=True)  # every process's
        if self.hooks is not None and self.hooks.loss_term is not None:
            # the same on every process, so DDP's average of the gradients keeps it as it is
            term = self.hooks.loss_term(self.model)
            self.log("train/regulariser", term.detach(), batch_size=batch["input_ids"].shape[0])
            loss = loss + term
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """The method's ``after_step`` hook, once per optimizer step (not per accumulated batch),
        while the step's gradients are still in place (Lightning clears them before the next backward)."""
        if self.hooks is None or self.hooks.after_step is None:
            return
        step = self.trainer.global_step
        if step != self._hooked_step:  # an optimizer step was taken (not an accumulated batch)
            self._hooked_step = step
            self.hooks.after_step(self.model, step - 1)

    def _validation(self):
        return self.val_full_metrics if self.full_validation else self.val_metrics

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.task.evaluate_batch(self.model, self.tokenizer, batch, self._validation())

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        found = self.task.evaluate_batch(self.model, self.tokenizer, batch, self.test_metrics)
        self.predictions.extend(zip(batch["position"], found, strict=True))  # (position in the shard, prediction)

    def on_validation_epoch_end(self) -> None:
        self._log_split("val", self._validation())

    def on_test_epoch_start(self) -> None:
        self.predictions = []

    def on_test_epoch_end(self) -> None:
        self._log_split("test", self.test_metrics)
        # this process's share in its shard's order, then every process's share in the split's order
        self.predictions = unshard(gather(InSplitOrder.restore(self.predictions)))

    def _log_split(self, split: str, metrics) -> None:
        values = metrics.compute()  # torchmetrics has already reduced across devices
        metrics.reset()
        for name, value in values.items():
            self.log(f"{split}/{name}", value, prog_bar=name in ("loss", self.task.primary_metric), sync_dist=False)

    # ------------------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        if self.optim is None:
            raise RuntimeError("PeftLabModule was built without an optimizer config; it can only evaluate")
        optimizer = build_optimizer(self.model, self.optim, self.method)
        schedule = build_scheduler(optimizer, self.optim, max(1, int(self.trainer.estimated_stepping_batches)))
        self._configured_lrs = list(schedule.base_lrs)  # this run's, before a checkpoint's state replaces them
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ----------------------------------------------------------------------------- checkpoints
    def trainable_names(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def trainable_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(p.shape) for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the trainable parameters only: the frozen base is rebuilt from its source."""
        trainable = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        if self.data_fingerprint is not None:  # the data files' sha256: a resumed run reads the same data
            checkpoint["data_fingerprint"] = dict(self.data_fingerprint)
        state = self.training_objective.checkpoint_state()  # what the objective's next steps still need (a rollout)
        if state:
            checkpoint["objective_state"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint must hold exactly this run's trainable parameters, in their shapes: resuming
        with another method, rank or target set fails here, instead of loading nothing in silence."""
        state, expected = checkpoint.get("state_dict", {}), self.trainable_shapes()
        saved = set(state)
        problem = None
        if saved != set(expected):
            problem = f"missing {_some(set(expected) - saved)}; unexpected {_some(saved - set(expected))}"
        else:
            wrong = sorted(k for k in saved if tuple(state[k].shape) != expected[k])
            if wrong:
                problem = (f"{len(wrong)} of different shape, e.g. {wrong[0]}: {list(state[wrong[0]].shape)} in the "
                           f"checkpoint, {list(expected[wrong[0]])} here")
        if problem:
            raise ConfigError(f"resume_from: the checkpoint does not fit this run's trainable parameters ({problem}): "
                              "resume with the method settings it was trained with")
        self.training_objective.load_checkpoint_state(checkpoint.get("objective_state") or {})


def _some(names: set[str], n: int = 3) -> str:
    shown = sorted(names)[:n]
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return (", ".join(shown) + more) if names else "none"
