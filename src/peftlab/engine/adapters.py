"""Evaluate many adapters of one base in one process: the base is loaded once (models/adapters.py),
each task's test split is read and tokenised once, and every adapter (and the base alone) is
scored on it in turn by switching the active adapter, which moves no weights. The scores equal
separate evaluations of each adapter (tests/test_many_adapters.py); peftlab-combine and
``peftlab-eval runs=`` use it, and scripts/benchmark_many_adapters.py measures what it saves."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Optional

from peftlab.engine.forgetting import mean_token_loss, read_text, windows
from peftlab.errors import ConfigError
from peftlab.export.verify import Evaluation, score_split
from peftlab.models.adapters import AdapterBank
from peftlab.runs.config import base_identity, read_adapter_config

log = logging.getLogger("peftlab.adapters")


def test_loader(task: Any, tokenizer: Any, seed: int, max_examples: Optional[int] = None, split: str = "test",
                limit_batches: Optional[float] = None):
    """(task, loader): the task's ``split`` as evaluation batches (its first ``max_examples``
    examples; ``limit_batches``: a number or share of its batches, as peftlab-eval takes it)."""
    from peftlab.data.datamodule import TaskDataModule
    from peftlab.tasks import make_task

    if max_examples is not None:
        task = make_task(dataclasses.replace(task.data, max_eval_examples=max_examples), run=task.run)
    data = TaskDataModule(task, tokenizer, seed=seed, test_split=split, limits={"test": limit_batches})
    loader = data.test_dataloader()
    if limit_batches is not None:
        total = len(loader)
        keep = int(total * limit_batches) if limit_batches <= 1.0 else int(limit_batches)
        if keep < 1:
            raise ConfigError(f"limit_batches: {limit_batches} of {total} {split} batches is none of them")
        return task, [b for _, b in zip(range(min(keep, total)), loader, strict=False)]
    return task, loader


def data_key(task: Any) -> str:
    """What makes two tasks' splits the same: their whole data config."""
    return json.dumps(dataclasses.asdict(task.data), sort_keys=True, default=str)


def labelled_tasks(tasks: list[Any]) -> dict[str, Any]:
    """label -> task for each distinct data config: its ``data.name``, numbered where two configs
    share a name (two ``data=custom`` runs of different files)."""
    distinct = list({data_key(t): t for t in tasks}.values())
    names = [t.data.name for t in distinct]
    return {(n if names.count(n) == 1 else f"{n}_{names[:i].count(n) + 1}"): t
            for i, (n, t) in enumerate(zip(names, distinct, strict=True))}


def score_adapters(bank: AdapterBank, names: list[Optional[str]], tasks: dict[str, Any], seed: int,
                   max_examples: Optional[int] = None) -> dict[tuple[Optional[str], str], Evaluation]:
    """(adapter name or None, task label) -> the test evaluation, for every adapter on every task."""
    found = {}
    for label, task in tasks.items():
        task, loader = test_loader(task, bank.tokenizer, seed, max_examples)
        batches = list(loader)  # tokenised and collated once for every adapter
        for name in names:
            with bank.use(name) as model:
                found[(name, label)] = score_split(model, task, bank.tokenizer, batches)
            log.info("%s on %s: %s", name or "base", label, found[(name, label)].metrics)
    return found


def prose_losses(bank: AdapterBank, names: list[Optional[str]], cfg: Any) -> dict[Optional[str], float]:
    """Each adapter's (and the base's) mean token loss on the forgetting text (engine/forgetting.py)."""
    config = bank.backbone.model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    rows = windows(read_text(cfg.text), bank.tokenizer, cfg.tokens, min(cfg.window, limit) if limit else cfg.window)
    losses = {}
    for name in names:
        with bank.use(name) as model:
            losses[name] = round(mean_token_loss(model, rows), 6)
    return losses


def expand_runs(items: list[str]) -> list[Path]:
    """``runs=``: run folders as given, and for a sweep folder every finished run in it, in job order."""
    from peftlab.reporting.runs import find_runs

    folders: list[Path] = []
    for item in items:
        folder = Path(item).expanduser()
        if (folder / "config.yaml").is_file() and (folder / "adapter").is_dir():
            found = [folder]
        elif folder.is_dir() and (folder / "multirun.yaml").is_file():
            try:
                every = find_runs([folder])
            except ConfigError as err:  # its messages name inputs=, the report's key
                raise ConfigError("runs:" + str(err).removeprefix("inputs:")) from None
            found = [r.path for r in every if r.status == "finished" and (r.path / "adapter").is_dir()]
            if not found:
                raise ConfigError(f"runs: the sweep folder {folder} holds no finished run")
            for r in every:
                if r.path not in found:
                    log.info("left out: %s (%s)", r.path, r.status if r.status != "finished" else "no adapter/")
        else:
            raise ConfigError(f"runs: {folder} is neither a finished peftlab-train run folder (config.yaml and "
                              "adapter/) nor a sweep folder (multirun.yaml)")
        folders += [f for f in found if f not in folders]
    return folders


def score_runs(conf: Any, folders: list[Path], runs: list[Any], tasks: list[Any]) -> tuple[list[dict[str, Any]], int]:
    """Each run's adapter on its task's ``conf.split``; runs of one base, task type and adapter kind
    share one loaded base (a run whose adapter cannot join it, such as a LoRA with its own biases
    or a head of another size, gets a base of its own). Returns (one row per run, in order; how
    many times a base was loaded)."""
    groups: dict[str, list[int]] = {}
    for i, (folder, run) in enumerate(zip(folders, runs, strict=True)):
        config = Path(folder) / "adapter" / "adapter_config.json"
        kind = read_adapter_config(folder / "adapter").get("peft_type") if config.is_file() else f"whole model {i}"
        key = json.dumps([base_identity(run.model), tasks[i].name, kind], sort_keys=True, default=str)
        groups.setdefault(key, []).append(i)
    rows: list[Optional[dict[str, Any]]] = [None] * len(runs)
    pending, loads = list(groups.values()), 0
    while pending:
        members = pending.pop(0)
        loads += 1
        pending += [[i] for i in _score_group(conf, members, folders, runs, tasks, rows)]
    return [r for r in rows if r is not None], loads


def _score_group(conf: Any, members: list[int], folders: list[Path], runs: list[Any], tasks: list[Any],
                 rows: list[Optional[dict[str, Any]]]) -> list[int]:
    """Score ``members`` on one loaded base, filling ``rows``; returns the runs that could not join it."""
    first, bank, whole, left = members[0], None, None, []
    if (folders[first] / "adapter" / "adapter_config.json").is_file():
        bank = AdapterBank(runs[first].model, conf.paths.cache_dir, tasks[first], conf.precision.dtype)
        for i in members:
            try:
                bank.add(f"run{i}", folders[i] / "adapter")
            except ConfigError:
                if i == first:
                    raise
                left.append(i)
        tokenizer = bank.tokenizer
    else:  # a run that saved its whole model (method=full) is a model of its own
        from peftlab.models import load_run_model

        whole, tokenizer = load_run_model(runs[first].model, folders[first], conf.paths.cache_dir, tasks[first],
                                          conf.precision.dtype)
    batches: dict[str, list] = {}
    for i in (m for m in members if m not in left):
        key = data_key(tasks[i])
        if key not in batches:  # read and tokenised once for every run of this data config
            task, loader = test_loader(tasks[i], tokenizer, conf.seed, None, conf.split, conf.limit_batches)
            batches[key] = list(loader)
        task = tasks[i]
        with bank.use(f"run{i}") if bank is not None else contextlib.nullcontext(whole.eval()) as model:
            found = score_split(model, task, tokenizer, batches[key])
        rows[i] = {"run_dir": str(folders[i]), "model": runs[i].model.name_or_path or runs[i].model.name,
                   "method": runs[i].method.name, "task": task.data.name, "task_type": task.name,
                   "primary_metric": task.primary_metric, "examples": len(found.predictions),
                   "metrics": found.metrics, "predictions": [{"prediction": p} for p in found.predictions]}
        log.info("%s (%s) on %s: %s", folders[i], runs[i].method.name, task.data.name, found.metrics)
    return left
