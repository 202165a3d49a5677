"""The dry run of ``peftlab-train`` (``--dry-run``): every check the command makes before its work,
made by the same functions, then what it would do (the plan), with no weights loaded and nothing
written.

The config is checked by ``checked()`` and the run folder by ``check_run_folder()``, as
``train_from_config`` checks them; then the steps of the training job that need no weights run on
what the dry run can build without them: the tokenizer (``load_tokenizer``, building nothing into the
cache), every data split read and encoded (``TaskDataModule``), the model on the meta device
(``build_on_meta``, as peftlab-params counts) wrapped by the same ``apply_method`` (the method's own
checks against the model: target modules, positions, a starting adapter), the callbacks and the
optimizer built from the config. What needs the weights is left to the run: a checkpoint that does
not fit the model's trainable weights, a model folder whose weights do not load, and what a task
computes from the model before training (a precomputed reference).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from peftlab.config.commands import TrainSchema
from peftlab.tasks import Task

Plan = list[tuple[str, str]]  # (what, the line that says it)


def format_plan(plan: Plan, indent: str = "  ") -> str:
    width = max((len(what) for what, _ in plan), default=0)
    return "\n".join(f"{indent}{what.ljust(width)}  {line}" for what, line in plan)


def folder_line(folder: Path) -> str:
    """An output folder as the plan says it: to be created, or empty and taken as it is."""
    folder = Path(folder)
    if not folder.exists():
        return f"{folder} (would be created)"
    return f"{folder} (exists{', empty' if not any(folder.iterdir()) else ''}; written into)"


def hardware_line(hardware: Any) -> str:
    """The layout asked for, and what this machine has."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    here = (f"{gpus} CUDA device(s): {torch.cuda.get_device_name(0)}" if gpus
            else f"no CUDA device, {os.cpu_count()} CPU cores")
    nodes = f", {hardware.num_nodes} nodes" if hardware.num_nodes > 1 else ""
    threads = f", {hardware.threads} threads" if hardware.threads else ""
    return (f"hardware={hardware.name}: accelerator {hardware.accelerator}, devices {hardware.devices}, "
            f"strategy {hardware.strategy}{nodes}{threads} (this machine: {here})")


def precision_line(precision: Any) -> str:
    kept = f", trained weights in {precision.trainable_dtype}" if precision.trainable_dtype else ""
    quantized = f", base quantized to {precision.quantize}" if precision.quantize else ""
    auto = f" (auto: {precision.auto})" if precision.auto else ""
    return f"{precision.name}: trainer {precision.trainer}, weights in {precision.dtype}{kept}{quantized}{auto}"


def params_line(method: str, counts: dict[str, Any]) -> str:
    return (f"{method}: {counts['trainable']:,} trainable of {counts['total']:,} parameters "
            f"({counts['trainable_pct']:.4f}%, counted on the meta device)")


def data_line(data: Any, sizes: dict[str, int]) -> str:
    splits = ", ".join(f"{split} {n:,}" for split, n in sizes.items())
    return (f"{data.name} ({data.task_type}) from {data.path}: {splits} examples; batch size {data.batch_size}, "
            f"max length {data.max_length}")


def train_plan(cfg: DictConfig, run_dir: Path) -> Plan:
    """``peftlab-train --dry-run``: the checks of ``train_from_config`` and of the job's set-up, on
    the meta device; returns the plan. Raises the run's own errors, with the run's own messages."""
    from peftlab.engine.train import as_recorded, check_run_folder, checked

    as_recorded(cfg)
    conf, task, objective = checked(cfg)
    run_dir = Path(run_dir)
    in_place = check_run_folder(conf, run_dir)
    if in_place:
        from peftlab.runs.resume import check_same_config

        check_same_config(cfg, run_dir)
    source, data, counts = _set_up(conf, task, in_place)
    plan = [("model", f"{_model_name(conf.model)} <- {source}"),
            ("method", params_line(conf.method.name, counts)),
            ("data", data_line(conf.data, data.sizes())),
            ("objective", objective),
            ("precision", precision_line(conf.precision)),
            ("hardware", hardware_line(conf.hardware)),
            ("run folder", folder_line(run_dir))]
    if conf.init_adapter:
        plan.insert(2, ("starts from", str(conf.init_adapter)))
    if conf.resume_from:
        plan.insert(2, ("resumes", f"{conf.resume_from}{' (in its own folder)' if in_place else ''}"))
    merges = conf.merge_after and conf.save_adapter and conf.method.capabilities.mergeable
    plan.append(("writes", "config.yaml, metrics.json, checkpoints/" + (", adapter/" if conf.save_adapter else "")
                 + (", merged/ (verified merge)" if merges else "")))
    return plan


def _model_name(model: Any) -> str:
    from peftlab.models import display_name

    return f"model={model.name}" + (f" ({display_name(model)})" if model.name_or_path else "")


def _set_up(conf: TrainSchema, task: Task, in_place: bool) -> tuple[str, Any, dict[str, Any]]:
    """The job's set-up without weights (engine/job.py ``set_up`` and ``apply_method``, in their
    order): (where the model comes from, the data module, the parameter counts)."""
    from peftlab.data.datamodule import TaskDataModule
    from peftlab.data.sources import fingerprint
    from peftlab.engine.checkpoints import read_checkpoint
    from peftlab.engine.module import PeftLabModule, build_optimizer
    from peftlab.engine.trainer import _instantiate_all
    from peftlab.methods import BuildContext, apply_method, count_parameters
    from peftlab.models import build_on_meta, load_tokenizer
    from peftlab.runs.resume import check_same_data

    tokenizer, source = load_tokenizer(conf.model, conf.paths.cache_dir)
    t = conf.trainer
    data = TaskDataModule(task, tokenizer, seed=conf.seed, limits={"val": t.limit_val_batches,
                                                                    "test": t.limit_test_batches})
    data.setup()  # every split read, encoded and checked for what would train or test nothing
    model = build_on_meta(conf.model, task, conf.paths.cache_dir)
    context = BuildContext(task, model, tokenizer, source, meta=True, batches=data.sample_batches)
    checkpoint = read_checkpoint(conf.resume_from) if conf.resume_from else None
    if checkpoint is not None and in_place:
        check_same_data(checkpoint.get("data_fingerprint"), fingerprint(conf.data))
    with warnings.catch_warnings():  # a starting adapter's tensors go nowhere on the meta device, as they should
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        wrapped = apply_method(model, conf.method, context, conf.init_adapter)
    counts = count_parameters(wrapped)
    if checkpoint is not None:  # its names and shapes against the trainable parameters': no weight is read
        PeftLabModule(wrapped, task, tokenizer, conf.optim, method=conf.method).on_load_checkpoint(checkpoint)
    _instantiate_all(conf.callbacks, "callbacks")  # as the Trainer's; loggers start with the run
    build_optimizer(wrapped, conf.optim, conf.method)
    return source, data, counts
