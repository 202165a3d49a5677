"""Build the lightning.Trainer from the config: hardware, precision, trainer args, callbacks, loggers.

Every training Trainer also gets what makes a run safe to interrupt: the divergence guard, the
random-generator state in each checkpoint, and checkpoints written atomically and read with
``weights_only=True``."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar

from peftlab.config.commands import EvalSchema, TrainSchema
from peftlab.config.instantiate import instantiate
from peftlab.engine.callbacks import DivergenceGuard, ResumeState
from peftlab.engine.checkpoints import SafeCheckpointIO
from peftlab.models.quiet import drop_warnings, filter_loggers


def quiet_lightning() -> None:
    """Lightning's notes that say nothing about the run: its loaders' worker count, modules in eval
    mode (a frozen base is), metrics that peftlab's torchmetrics reduce across processes before they
    are logged, and its advertisements."""
    drop_warnings(r".*isinstance\(treespec, LeafSpec\).*", r".*does not have many workers.*",
                  r".*Found \d+ module\(s\) in eval mode.*",
                  r".*It is recommended to use `self.log\(.*sync_dist=True.*")
    filter_loggers("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
    # Lightning prints its messages itself when it loads before logging is set up; under Hydra they
    # go to the run's log like every other message, once
    if logging.getLogger().handlers:
        lightning_logger = logging.getLogger("lightning")
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)


def split_metrics(logged: dict[str, Any], split: str) -> dict[str, float]:
    """``{"test/loss": t, ...}`` as logged by the module -> ``{"loss": 0.123456, ...}`` for ``split``."""
    return {k.split("/", 1)[1]: round(float(v), 6) for k, v in logged.items() if k.startswith(f"{split}/")}


# what each group's nodes must build
KINDS = {"callbacks": ("lightning.pytorch.callbacks.Callback",), "logger": ("lightning.pytorch.loggers.Logger",)}


def _instantiate_all(nodes: dict[str, Any], group: str) -> list[Any]:
    return [instantiate(node, f"{group}.{name}", KINDS[group]) for name, node in nodes.items() if node is not None]


def _strategy(hardware) -> Any:
    """Lightning's strategy: ``fsdp`` is FSDP2 (its ModelParallelStrategy, every process one
    data-parallel shard), which trains a model of frozen and trainable parameters on CPUs and GPUs."""
    if hardware.strategy == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        return ModelParallelStrategy(data_parallel_size=hardware.devices * hardware.num_nodes, tensor_parallel_size=1,
                                     save_distributed_checkpoint=False)
    return hardware.strategy


def _placement(conf: TrainSchema | EvalSchema) -> dict[str, Any]:
    """Where and in what precision the Trainer runs: the hardware and precision groups."""
    from peftlab.engine.precision import trainer_precision

    return dict(accelerator=conf.hardware.accelerator, devices=conf.hardware.devices,
                strategy=_strategy(conf.hardware), num_nodes=conf.hardware.num_nodes,
                precision=trainer_precision(conf.precision, conf.hardware), default_root_dir=conf.paths.run_dir,
                use_distributed_sampler=False)  # peftlab's loaders shard the data themselves


def make_trainer(conf: TrainSchema, evaluation: bool = False, extra: tuple[Any, ...] = ()) -> L.Trainer:
    """The Trainer of a run; ``evaluation=True`` gives one that only tests (no logger, no checkpoints).
    ``extra``: callbacks of the job's own (the best-checkpoint selection)."""
    quiet_lightning()
    t = conf.trainer
    callbacks = _instantiate_all(conf.callbacks, "callbacks") + list(extra)
    if not t.enable_progress_bar:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if evaluation:
        callbacks = [c for c in callbacks if isinstance(c, ProgressBar)]
    if t.fast_dev_run:  # a smoke test: nothing it trains is worth keeping (Lightning would still write last.ckpt)
        callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
    loggers = [] if evaluation else _instantiate_all(conf.logger, "logger")
    if not loggers:  # it has nowhere to write (logger=none)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    has_checkpoint = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    if not evaluation:
        callbacks += [DivergenceGuard(), ResumeState()]
    return L.Trainer(
        **_placement(conf),
        plugins=[SafeCheckpointIO()],
        callbacks=callbacks,
        logger=loggers or False,
        enable_checkpointing=has_checkpoint,
        enable_model_summary=False,
        max_steps=t.max_steps,
        max_epochs=t.max_epochs,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=t.log_every_n_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches,
        num_sanity_val_steps=t.num_sanity_val_steps,
        fast_dev_run=t.fast_dev_run,
        deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar,
    )


def make_eval_trainer(conf: EvalSchema) -> L.Trainer:
    """A Trainer for ``peftlab-eval``: test only, no logger, no checkpoints."""
    quiet_lightning()
    return L.Trainer(
        **_placement(conf),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_test_batches=conf.limit_batches,
    )


def log_run_config(trainer: L.Trainer, cfg: Any, params: dict[str, Any]) -> None:
    """The run's resolved config and its parameter counts to every logger, as its hyper-parameters
    (TensorBoard's hparams, MLflow's params, wandb's config, the CSV logger's hparams.yaml)."""
    if not trainer.loggers:
        return
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg, resolve=True)
    hparams = {k: v for k, v in config.items() if k not in ("callbacks", "logger", "paths", "hydra")}
    hparams["params"] = params
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


@contextlib.contextmanager
def finished_loggers(trainer: L.Trainer) -> Iterator[None]:
    """End each logger's run when the block ends. Lightning leaves wandb's run open, and a later
    WandbLogger in the same process (the next run of a notebook) would log into it."""
    try:
        yield
    finally:
        for logger in trainer.loggers:
            experiment = getattr(logger, "_experiment", None)  # never create one just to end it
            if experiment is not None and callable(getattr(experiment, "finish", None)):
                experiment.finish()
